//! Following the kernel's routes: a netlink socket subscribed to the IPv4
//! route and link groups, read on a thread of its own.
//!
//! [`RouteListener::start`] starts the thread (a tokio runtime that only
//! reads netlink); [`RouteListener::subscribe`] opens a subscribed socket
//! whose [`RouteEvent`]s arrive on a [`Subscription`]. The thread drains the
//! socket however busy the caller is (events wait in the subscription's
//! channel, not in the kernel's buffer), and decodes each message there.
//!
//! The rules this follows (measured, see the module of the daemon that
//! uses it):
//! - nothing is ever sent on a subscribed socket: under overrun the kernel
//!   drops the replies too, and a request would wait for ever;
//! - the socket's receive buffer is set with `SO_RCVBUFFORCE` (not capped by
//!   `net.core.rmem_max`; needs `CAP_NET_ADMIN`), falling back to
//!   `SO_RCVBUF`;
//! - `NETLINK_NO_ENOBUFS` stays off: when the buffer overruns, the next read
//!   fails with `ENOBUFS`, which arrives as [`RouteEvent::Overrun`]. Events
//!   read after it may be older than the loss: the caller drops the
//!   subscription, subscribes anew and dumps.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use rtnetlink::packet_core::{NLM_F_APPEND, NLM_F_EXCL, NLM_F_REPLACE, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols};
use tokio::sync::{mpsc, oneshot};

use super::routes::{DATAGRAM, Decode, KernelRoute, for_each_message};

/// `RTNLGRP_LINK`: link changes (a device going down or away flushes its
/// routes without any route message).
const GROUP_LINK: u32 = libc::RTNLGRP_LINK;
/// `RTNLGRP_IPV4_ROUTE`: IPv4 route changes.
const GROUP_IPV4_ROUTE: u32 = libc::RTNLGRP_IPV4_ROUTE;

/// One change the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// `RTM_NEWROUTE`: a route was added or replaced.
    New {
        /// The route as it is now.
        route: KernelRoute,
        /// `NLM_F_REPLACE`: it took the place of the first route with its
        /// `(table, prefix, tos, metric)` (no `RTM_DELROUTE` is sent for that
        /// one); without it, it was added beside any such route.
        replace: bool,
        /// `NLM_F_APPEND`: added after the routes with its key (`ip route
        /// append`); without it, before them (`prepend`).
        append: bool,
        /// `NLM_F_EXCL`: the kernel had no route with its key before (a
        /// plain add, or a replace that matched nothing): whatever the
        /// reader still holds under that key is stale.
        exclusive: bool,
    },
    /// `RTM_DELROUTE`: a route was removed.
    Del(KernelRoute),
    /// `RTM_NEWLINK`: interface `index` changed; `up` is its `IFF_UP`.
    Link {
        /// The interface.
        index: u32,
        /// Whether it is administratively up.
        up: bool,
    },
    /// `RTM_DELLINK`: interface `index` is gone.
    LinkGone {
        /// The interface.
        index: u32,
    },
    /// The socket overran (`ENOBUFS`): events were lost. Drop this
    /// subscription, subscribe anew and dump.
    Overrun,
    /// The socket failed otherwise, or a message could not be decoded; no
    /// event follows.
    Failed(String),
}

/// The thread that reads subscribed netlink sockets. Dropping it stops the
/// thread and ends its subscriptions.
#[derive(Debug)]
pub struct RouteListener {
    runtime: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RouteListener {
    /// Starts the listener thread (`tunl-routes`). It holds no socket until
    /// [`RouteListener::subscribe`].
    ///
    /// # Errors
    /// The runtime or the thread cannot be created.
    pub fn start() -> io::Result<RouteListener> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let runtime = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tunl-routes".to_owned())
            .spawn(move || {
                // Ends when the sender is sent on or dropped.
                let _ = rt.block_on(stopped);
            })?;
        Ok(RouteListener {
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the listener thread and waits until it has run (the
    /// daemon drops the thread's capabilities this way once its own
    /// privilege drop is done: reading needs none).
    ///
    /// # Errors
    /// The thread is gone.
    pub fn run_on_thread(&self, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let (done, wait) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            f();
            let _ = done.send(());
        });
        wait.recv()
            .map_err(|_| io::Error::other("the route listener thread is gone"))
    }

    /// Opens a socket in the calling thread's network namespace, subscribed
    /// to IPv4 route and link changes, with a receive buffer of
    /// `receive_buffer` bytes (the kernel doubles it), and starts reading it
    /// on the listener thread. Set up the subscription before dumping: every
    /// change after the dump then arrives on it.
    ///
    /// # Errors
    /// The socket cannot be opened, bound or given its buffer.
    pub fn subscribe(&self, receive_buffer: usize) -> io::Result<Subscription> {
        // The socket registers with the listener's runtime, which reads it.
        let _entered = self.runtime.enter();
        let mut socket = TokioSocket::new(protocols::NETLINK_ROUTE)?;
        let groups = (1 << (GROUP_LINK - 1)) | (1 << (GROUP_IPV4_ROUTE - 1));
        socket.socket_mut().bind(&SocketAddr::new(0, groups))?;
        if set_receive_buffer_force(socket.socket_ref(), receive_buffer).is_err() {
            socket.socket_ref().set_rx_buf_sz(receive_buffer)?;
        }
        let effective = socket.socket_ref().get_rx_buf_sz()?;
        let (tx, events) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        self.runtime.spawn(async move {
            tokio::select! {
                () = read_events(socket, tx) => {}
                _ = stopped => {}
            }
        });
        Ok(Subscription {
            events,
            _stop: stop,
            receive_buffer: effective,
        })
    }
}

impl Drop for RouteListener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Events from one subscribed socket, in the kernel's order. Dropping it
/// closes the socket.
#[derive(Debug)]
pub struct Subscription {
    events: mpsc::UnboundedReceiver<RouteEvent>,
    _stop: oneshot::Sender<()>,
    receive_buffer: usize,
}

impl Subscription {
    /// Waits for events and moves up to `limit` of those queued into `out`
    /// (at least one); returns how many, 0 once the subscription has ended
    /// (after [`RouteEvent::Failed`]). Cancel-safe.
    pub async fn recv_many(&mut self, out: &mut Vec<RouteEvent>, limit: usize) -> usize {
        self.events.recv_many(out, limit).await
    }

    /// The socket's receive buffer as the kernel set it (twice the size
    /// asked for, at least its minimum).
    pub fn receive_buffer(&self) -> usize {
        self.receive_buffer
    }
}

/// `SO_RCVBUFFORCE`: the receive buffer, past `net.core.rmem_max` (needs
/// `CAP_NET_ADMIN`; netlink-sys only wraps `SO_RCVBUF`).
fn set_receive_buffer_force(socket: &impl AsRawFd, size: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is an open socket borrowed for the call;
    // `value` is a live c_int and the length passed is its size, as
    // setsockopt(2) expects for SO_RCVBUFFORCE.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads the socket until it fails or the receiver is gone.
async fn read_events(socket: TokioSocket, tx: mpsc::UnboundedSender<RouteEvent>) {
    let mut buf = Vec::with_capacity(DATAGRAM);
    loop {
        buf.clear();
        match socket.recv(&mut buf).await {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                if tx.send(RouteEvent::Overrun).is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                let _ = tx.send(RouteEvent::Failed(format!("netlink read: {e}")));
                return;
            }
        }
        let sent = for_each_message(&buf, |msg| {
            let flags = msg.header.flags;
            let event = match msg.payload {
                NetlinkPayload::InnerMessage(m) => event(m, flags),
                _ => None,
            };
            match event {
                Some(e) => tx.send(e).map_err(|_| ()),
                None => Ok(()),
            }
        });
        match sent {
            Ok(()) => {}
            Err(Decode::Stop(())) => return,
            Err(Decode::Bad(message)) => {
                let _ = tx.send(RouteEvent::Failed(format!(
                    "undecodable netlink message: {message}"
                )));
                return;
            }
        }
    }
}

/// The event for one message, if it is one tunl follows.
fn event(msg: RouteNetlinkMessage, flags: u16) -> Option<RouteEvent> {
    match msg {
        RouteNetlinkMessage::NewRoute(m) => Some(RouteEvent::New {
            route: KernelRoute::from_message(&m)?,
            replace: flags & NLM_F_REPLACE != 0,
            append: flags & NLM_F_APPEND != 0,
            exclusive: flags & NLM_F_EXCL != 0,
        }),
        RouteNetlinkMessage::DelRoute(m) => Some(RouteEvent::Del(KernelRoute::from_message(&m)?)),
        RouteNetlinkMessage::NewLink(m) => Some(RouteEvent::Link {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
        }),
        RouteNetlinkMessage::DelLink(m) => Some(RouteEvent::LinkGone {
            index: m.header.index,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::link::LinkMessage;
    use rtnetlink::packet_route::route::RouteMessage;

    use super::*;

    #[test]
    fn messages_become_events_with_their_flags() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        let new = event(RouteNetlinkMessage::NewRoute(r.clone()), NLM_F_REPLACE);
        assert!(matches!(
            new,
            Some(RouteEvent::New {
                replace: true,
                append: false,
                exclusive: false,
                ..
            })
        ));
        let added = event(RouteNetlinkMessage::NewRoute(r.clone()), 0x600);
        assert!(matches!(
            added,
            Some(RouteEvent::New {
                replace: false,
                append: false,
                exclusive: true,
                ..
            })
        ));
        let appended = event(RouteNetlinkMessage::NewRoute(r.clone()), 0xc00);
        assert!(matches!(
            appended,
            Some(RouteEvent::New {
                replace: false,
                append: true,
                ..
            })
        ));
        assert!(matches!(
            event(RouteNetlinkMessage::DelRoute(r.clone()), 0),
            Some(RouteEvent::Del(_))
        ));
        r.header.address_family = AddressFamily::Inet6;
        assert_eq!(event(RouteNetlinkMessage::NewRoute(r), 0), None);
        let mut l = LinkMessage::default();
        l.header.index = 7;
        assert_eq!(
            event(RouteNetlinkMessage::NewLink(l.clone()), 0),
            Some(RouteEvent::Link {
                index: 7,
                up: false
            })
        );
        l.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        assert_eq!(
            event(RouteNetlinkMessage::NewLink(l.clone()), 0),
            Some(RouteEvent::Link { index: 7, up: true })
        );
        assert_eq!(
            event(RouteNetlinkMessage::DelLink(l), 0),
            Some(RouteEvent::LinkGone { index: 7 })
        );
    }
}
