//! Many route requests per datagram, on a socket of their own: what
//! [`Netlink::add_routes`](super::Netlink::add_routes) and
//! [`Netlink::del_routes`](super::Netlink::del_routes) send a large route
//! set with.
//!
//! Only the last request of a datagram carries `NLM_F_ACK`. The kernel
//! handles the requests of a datagram in order, inside the `send`, and
//! answers every failed one with an error whether it asked for an
//! acknowledgement or not; so the last request's acknowledgement comes
//! after every error of its datagram.

use std::io;

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols};

use super::NetlinkError;
use super::routes::{DATAGRAM, Decode, for_each_message};

/// A NETLINK_ROUTE socket for batched requests.
pub(super) struct Socket {
    socket: TokioSocket,
    /// The sequence number of the last request sent.
    seq: u32,
    bytes: Vec<u8>,
    reply: Vec<u8>,
}

impl Socket {
    /// Opens and binds the socket.
    pub(super) fn open() -> io::Result<Socket> {
        let mut socket = TokioSocket::new(protocols::NETLINK_ROUTE)?;
        socket.socket_mut().bind(&SocketAddr::new(0, 0))?;
        // Errors quote only the failed request's header, not all of it.
        let _ = socket.socket_ref().set_cap_ack(true);
        Ok(Socket {
            socket,
            seq: 0,
            bytes: Vec::new(),
            reply: Vec::with_capacity(DATAGRAM),
        })
    }

    /// Sends `messages` (each with `NLM_F_REQUEST` and `flags`) in one
    /// datagram and waits for the last one's acknowledgement; each refused
    /// one's error goes to its place in `results` (named with `op(i)`), the
    /// others are left as they are.
    ///
    /// # Errors
    /// The socket failed, or lost replies (`ENOBUFS`): which of the
    /// requests the kernel refused is then not known.
    pub(super) async fn send_all(
        &mut self,
        messages: impl ExactSizeIterator<Item = RouteNetlinkMessage>,
        flags: u16,
        results: &mut [Result<(), NetlinkError>],
        op: impl Fn(usize) -> String,
    ) -> io::Result<()> {
        let count = messages.len();
        if count == 0 {
            return Ok(());
        }
        let first = self.seq.wrapping_add(1);
        self.bytes.clear();
        for (i, m) in messages.enumerate() {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | flags;
            if i + 1 == count {
                header.flags |= NLM_F_ACK;
            }
            header.sequence_number = self.seq;
            let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(m));
            request.finalize();
            let at = self.bytes.len();
            // Each message starts 4-byte aligned.
            let len = (request.buffer_len() + 3) & !3;
            self.bytes.resize(at + len, 0);
            request.serialize(&mut self.bytes[at..]);
        }
        self.socket
            .send_to(&self.bytes, &SocketAddr::new(0, 0))
            .await?;
        let last = self.seq;
        loop {
            self.reply.clear();
            self.socket.recv(&mut self.reply).await?;
            let mut acked = false;
            let decoded = for_each_message(&self.reply, |msg| {
                let NetlinkPayload::Error(e) = msg.payload else {
                    return Ok(());
                };
                let seq = msg.header.sequence_number;
                let i = seq.wrapping_sub(first) as usize;
                if let (Some(code), Some(slot)) = (e.code, results.get_mut(i)) {
                    *slot = Err(NetlinkError::Kernel {
                        op: op(i),
                        source: io::Error::from_raw_os_error(-code.get()),
                    });
                }
                acked |= seq == last;
                Ok::<(), ()>(())
            });
            if let Err(Decode::Bad(message)) = decoded {
                return Err(io::Error::new(io::ErrorKind::InvalidData, message));
            }
            if acked {
                return Ok(());
            }
        }
    }
}
