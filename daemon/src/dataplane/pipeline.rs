//! The dataplane's per-batch decisions, without I/O.
//!
//! A worker reads a batch, hands its buffers to the [`Pipeline`] together
//! with what the decisions read (the policy snapshot, the route table
//! guard, the path MTUs, the neighbour table, the time), and gets back what
//! to do, as boringtun's `Tunn` returns a `TunnResult` and quinn-proto
//! returns transmits:
//!
//! - [`Pipeline::encap`]: pod packets from TUN, encapsulated in place, give
//!   an [`EncapOutcome`]: the outer packets to send and through which
//!   [`Sender`], the ICMP errors to write back into TUN, and a [`Verdict`]
//!   per packet;
//! - [`Pipeline::decap`]: outer packets from the underlay, decapsulated in
//!   place, give a [`DecapOutcome`]: how many buffers to write to TUN;
//! - [`underlay_icmp`]: an ICMP error from the underlay gives an
//!   [`UnderlayVerdict`], possibly a lower path MTU to offer.
//!
//! The pipeline makes no syscall and reads no clock. It allocates nothing
//! per packet or per batch: its outcomes are arrays sized to the batch,
//! allocated once, and ICMP answers go into [`ICMP_ANSWERS`] fixed slots
//! (answers beyond them count as rate-limited). It counts into the
//! worker's [`BatchCounts`]; what the I/O then does (sent, refused, written)
//! the worker counts.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tunl_encap::{
    DropReason, EncapError, HEADROOM, ICMP_ERROR_MAX_LEN, IdentGenerator, OuterChecksum,
    TokenBucket, TunnelSettings, decapsulate_with, encapsulate, inner_destination,
};
use tunl_encap::{UnderlayError, Unreachable};
use tunl_io::PacketBuf;
use tunl_routing::Lpm;

use super::counters::LocalCounters;
use super::nexthop::NextHop;
use super::pmtu::PathMtu;
use super::state::{Neighbour, Policy, resolve_macs};
use super::stats::BatchCounts;

// The TUN reads place packets at tunl_io's HEADROOM, where encap writes the
// outer header in front of them: the two must agree.
const _: () = assert!(tunl_io::HEADROOM == tunl_encap::HEADROOM);

/// Segments handled per encap batch (the size of the worker's TX buffer
/// ring and of [`EncapOutcome`]).
pub const TX_BATCH: usize = 256;
/// Outer packets received per `recvmmsg` (the size of [`DecapOutcome`]).
pub const RX_BATCH: usize = 32;
/// ICMP errors one encap batch can answer with; more count as
/// rate-limited. Above the token bucket's burst (at most 10), so within one
/// batch it is the bucket that limits, as before the slots existed.
pub const ICMP_ANSWERS: usize = 16;
/// The lowest underlay path MTU tunl accepts from ICMP (Linux's
/// `net.ipv4.route.min_pmtu` default).
pub const MIN_PATH_MTU: u16 = 552;
/// The shortest time between two path MTU reductions toward one node: a
/// frag-needed that would lower it again sooner is refused.
pub const PMTU_REDUCTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What becomes of one packet of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Encapsulated: the outer packet, `bufs[i][start..]`, goes to `node`.
    Send {
        /// The next hop: the node that owns the inner destination's block.
        node: Ipv4Addr,
        /// Where the outer packet starts in its buffer.
        start: usize,
    },
    /// Decapsulated: the inner packet from `node` goes to TUN.
    Deliver {
        /// The outer source: the node it came from.
        node: Ipv4Addr,
        /// The inner packet's length.
        len: usize,
    },
    /// Dropped for this reason (an ICMP answer about it may be among the
    /// outcome's [`IcmpAnswers`]).
    Drop(DropReason),
    /// An empty buffer (a packet the socket truncated, counted by the I/O):
    /// nothing to decide.
    Skip,
}

/// The socket an encap batch's outer packets leave through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// The raw IP socket: the kernel routes each packet and resolves its
    /// next hop (ARP).
    Raw,
    /// The AF_PACKET socket (`[dataplane] underlay = "packet"`), with every
    /// next hop's MAC in [`EncapOutcome::macs`].
    Packet,
    /// The worker's AF_XDP socket (`underlay = "xdp"`), with every next
    /// hop's MAC in [`EncapOutcome::macs`].
    Xdp,
}

/// One ICMP error to write into TUN, toward the inner source of a dropped
/// packet.
#[derive(Clone, Copy, Debug)]
pub struct IcmpAnswer {
    about: usize,
    len: usize,
    bytes: [u8; ICMP_ERROR_MAX_LEN],
}

impl IcmpAnswer {
    const EMPTY: IcmpAnswer = IcmpAnswer {
        about: 0,
        len: 0,
        bytes: [0; ICMP_ERROR_MAX_LEN],
    };

    /// The index in the batch of the packet it answers.
    pub fn about(&self) -> usize {
        self.about
    }

    /// The whole ICMP error, IPv4 header included.
    pub fn packet(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The ICMP errors of one batch: [`ICMP_ANSWERS`] fixed slots.
#[derive(Debug)]
pub struct IcmpAnswers {
    slots: [IcmpAnswer; ICMP_ANSWERS],
    len: usize,
}

impl IcmpAnswers {
    fn new() -> IcmpAnswers {
        IcmpAnswers {
            slots: [IcmpAnswer::EMPTY; ICMP_ANSWERS],
            len: 0,
        }
    }

    /// The answers, in batch order.
    pub fn iter(&self) -> impl Iterator<Item = &IcmpAnswer> {
        self.slots[..self.len].iter()
    }

    /// How many answers there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Answers packet `about` with the error `build` writes (returning its
    /// length, or None to stay silent), if the rate limit and a free slot
    /// allow; otherwise counts it as rate-limited.
    fn answer(
        &mut self,
        limit: &mut IcmpLimit,
        now: Instant,
        local: &mut LocalCounters,
        about: usize,
        build: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        let Some(slot) = self.slots.get_mut(self.len) else {
            local.icmp_rate_limited += 1;
            return;
        };
        if !limit.allow(now) {
            local.icmp_rate_limited += 1;
            return;
        }
        if let Some(len) = build(&mut slot.bytes) {
            slot.about = about;
            slot.len = len;
            self.len += 1;
        }
    }
}

/// One outer packet to send: `bufs[buf][start..]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transmit {
    /// The index of its buffer in the batch.
    pub buf: usize,
    /// Where the outer packet starts in the buffer.
    pub start: usize,
}

/// What [`Pipeline::encap`] decided for a batch.
#[derive(Debug)]
pub struct EncapOutcome {
    verdicts: [Verdict; TX_BATCH],
    packets: usize,
    transmits: [Transmit; TX_BATCH],
    nodes: [Ipv4Addr; TX_BATCH],
    macs: [[u8; 6]; TX_BATCH],
    sends: usize,
    sender: Sender,
    neighbour_miss: bool,
    icmp: IcmpAnswers,
}

impl EncapOutcome {
    fn new() -> EncapOutcome {
        EncapOutcome {
            verdicts: [Verdict::Skip; TX_BATCH],
            packets: 0,
            transmits: [Transmit::default(); TX_BATCH],
            nodes: [Ipv4Addr::UNSPECIFIED; TX_BATCH],
            macs: [[0; 6]; TX_BATCH],
            sends: 0,
            sender: Sender::Raw,
            neighbour_miss: false,
            icmp: IcmpAnswers::new(),
        }
    }

    fn clear(&mut self) {
        self.packets = 0;
        self.sends = 0;
        self.sender = Sender::Raw;
        self.neighbour_miss = false;
        self.icmp.len = 0;
    }

    /// One verdict per packet of the batch, in batch order.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts[..self.packets]
    }

    /// The outer packets to send, in batch order.
    pub fn transmits(&self) -> &[Transmit] {
        &self.transmits[..self.sends]
    }

    /// The next hop of each transmit (the raw socket's destinations).
    pub fn nodes(&self) -> &[Ipv4Addr] {
        &self.nodes[..self.sends]
    }

    /// The next hop's MAC of each transmit; meaningful with
    /// [`Sender::Packet`] and [`Sender::Xdp`] only.
    pub fn macs(&self) -> &[[u8; 6]] {
        &self.macs[..self.sends]
    }

    /// The socket the transmits leave through: [`EncapState::direct`] when
    /// the neighbour table was given and holds every next hop's MAC,
    /// otherwise [`Sender::Raw`].
    pub fn sender(&self) -> Sender {
        self.sender
    }

    /// Whether a next hop was missing from the neighbour table: report it
    /// ([`NeighbourTable::report_miss`](super::NeighbourTable::report_miss))
    /// so the control plane reads the table again.
    pub fn neighbour_miss(&self) -> bool {
        self.neighbour_miss
    }

    /// The ICMP errors to write into TUN.
    pub fn icmp(&self) -> &IcmpAnswers {
        &self.icmp
    }
}

/// What [`Pipeline::decap`] decided for a batch.
#[derive(Debug)]
pub struct DecapOutcome {
    verdicts: [Verdict; RX_BATCH],
    packets: usize,
    deliver: usize,
}

impl DecapOutcome {
    /// One verdict per buffer of the batch, in the order received (the
    /// buffers themselves have been reordered: see [`Pipeline::decap`]).
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts[..self.packets]
    }

    /// How many buffers, from the first, hold an inner packet at
    /// [`HEADROOM`] for TUN.
    pub fn deliver(&self) -> usize {
        self.deliver
    }
}

/// What [`Pipeline::encap`] reads besides the packets.
#[derive(Clone, Copy)]
pub struct EncapState<'a> {
    /// The policy snapshot (tunnel settings, the nodes).
    pub policy: &'a Policy,
    /// The route table, through the batch's read guard.
    pub routes: &'a Lpm<NextHop>,
    /// The learned path MTUs.
    pub pmtu: &'a PathMtu,
    /// The next hops' MACs, sorted by address, when the worker has a
    /// link-layer sender (AF_PACKET or AF_XDP); `None` sends every batch
    /// through the raw socket.
    pub neighbours: Option<&'a [Neighbour]>,
    /// The link-layer sender a batch whose next hops' MACs are all known
    /// goes through ([`Sender::Packet`] or [`Sender::Xdp`]).
    pub direct: Sender,
    /// The time of the batch (ICMP rate limit, path MTU expiry).
    pub now: Instant,
    /// Whether `tunnel.local` is an address of this node
    /// ([`LinkStates::local_present`](super::LinkStates::local_present)):
    /// when it is not, nothing is sent from it.
    pub local_present: bool,
}

/// A worker's handle on the daemon-wide ICMP token bucket. Once the bucket
/// refuses, the worker refuses on its own for the time one token takes to
/// come back, without taking the lock: under a flood of packets that each
/// deserve an answer, the workers do not contend on the bucket per packet.
/// It never allows more than the bucket does.
#[derive(Debug)]
pub struct IcmpLimit {
    bucket: Arc<Mutex<TokenBucket>>,
    quiet_until: Option<Instant>,
}

impl IcmpLimit {
    /// A handle on `bucket`, shared by every worker.
    pub fn new(bucket: Arc<Mutex<TokenBucket>>) -> IcmpLimit {
        IcmpLimit {
            bucket,
            quiet_until: None,
        }
    }

    /// Whether an ICMP error may be sent at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.quiet_until.is_some_and(|until| now < until) {
            return false;
        }
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let allowed = bucket.allow(now);
        self.quiet_until = (!allowed).then(|| now + bucket.token_interval());
        allowed
    }
}

/// One worker's decision state: its IPv4 ID generator, its handle on the
/// ICMP rate limit, and its outcome arrays.
#[derive(Debug)]
pub struct Pipeline {
    ids: IdentGenerator,
    icmp_limit: IcmpLimit,
    encap: Box<EncapOutcome>,
    decap: Box<DecapOutcome>,
}

impl Pipeline {
    /// A pipeline whose outer IPv4 IDs derive from `seed` (a different one
    /// per worker and run) and whose ICMP errors draw on `icmp_limit`.
    pub fn new(seed: u32, icmp_limit: IcmpLimit) -> Pipeline {
        Pipeline {
            ids: IdentGenerator::new(seed),
            icmp_limit,
            encap: Box::new(EncapOutcome::new()),
            decap: Box::new(DecapOutcome {
                verdicts: [Verdict::Skip; RX_BATCH],
                packets: 0,
                deliver: 0,
            }),
        }
    }

    /// Routes and encapsulates a batch of pod packets: each buffer holds one
    /// inner packet at [`HEADROOM`] (as a TUN read leaves it), and the outer
    /// header is written in front of it. Handles the first [`TX_BATCH`]
    /// buffers. Counts drops by reason, `icmp_rate_limited`, `tx_bytes` and
    /// the per-node traffic into `counts`.
    ///
    /// A packet without a route is dropped with a net-unreachable answer;
    /// while `tunnel.local` is not an address of this node, every routed
    /// packet is dropped (`no_local_address`) with a host-unreachable one; a
    /// packet too big for the MTU toward its node (the learned path MTU
    /// when one holds) is dropped with a frag-needed carrying that MTU.
    pub fn encap<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        bufs: &mut [B],
        state: &EncapState<'_>,
        counts: &mut BatchCounts,
    ) -> &EncapOutcome {
        let Pipeline {
            ids,
            icmp_limit,
            encap: out,
            ..
        } = self;
        out.clear();
        let policy = state.policy;
        let settings: &TunnelSettings = &policy.settings;
        let BatchCounts { local, nodes } = counts;
        for (i, buf) in bufs.iter_mut().take(TX_BATCH).enumerate() {
            out.packets = i + 1;
            let inner_len = buf.as_ref().len().saturating_sub(HEADROOM);
            let Some(dst) = buf.as_ref().get(HEADROOM..).and_then(inner_destination) else {
                local.drop(DropReason::MalformedInner);
                out.verdicts[i] = Verdict::Drop(DropReason::MalformedInner);
                continue;
            };
            let inner = &buf.as_ref()[HEADROOM..];
            let node = state.routes.lookup(dst).and_then(|hop| {
                policy.node_for(hop, dst, || {
                    inner
                        .get(12..16)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map_or(Ipv4Addr::UNSPECIFIED, Ipv4Addr::from)
                })
            });
            let Some(next_hop) = node else {
                local.drop(DropReason::NoRoute);
                out.verdicts[i] = Verdict::Drop(DropReason::NoRoute);
                let inner = &buf.as_ref()[HEADROOM..];
                out.icmp.answer(icmp_limit, state.now, local, i, |o| {
                    tunl_encap::unreachable(inner, Unreachable::Net, dst, o)
                });
                continue;
            };
            if !state.local_present {
                // As the kernel's tunl0 when its source address is gone:
                // host unreachable, and nothing sent.
                local.drop(DropReason::NoLocalAddress);
                out.verdicts[i] = Verdict::Drop(DropReason::NoLocalAddress);
                let inner = &buf.as_ref()[HEADROOM..];
                out.icmp.answer(icmp_limit, state.now, local, i, |o| {
                    tunl_encap::unreachable(inner, Unreachable::Host, dst, o)
                });
                continue;
            }
            let mtu = state
                .pmtu
                .effective(next_hop, inner_len, settings.mtu, state.now);
            match encapsulate(buf.as_mut(), HEADROOM, next_hop, mtu, settings, ids) {
                Ok(outer) => {
                    out.verdicts[i] = Verdict::Send {
                        node: next_hop,
                        start: outer.start,
                    };
                    out.transmits[out.sends] = Transmit {
                        buf: i,
                        start: outer.start,
                    };
                    out.nodes[out.sends] = next_hop;
                    out.sends += 1;
                    nodes.tx(&policy.vias, next_hop, inner_len);
                    local.tx_bytes += inner_len as u64;
                }
                Err(EncapError::TooBig { mtu }) => {
                    local.drop(DropReason::TooBig);
                    out.verdicts[i] = Verdict::Drop(DropReason::TooBig);
                    let inner = &buf.as_ref()[HEADROOM..];
                    out.icmp.answer(icmp_limit, state.now, local, i, |o| {
                        tunl_encap::frag_needed(inner, mtu, dst, o)
                    });
                }
                Err(e) => {
                    local.drop(e.reason());
                    out.verdicts[i] = Verdict::Drop(e.reason());
                }
            }
        }
        // The link layer (AF_PACKET or AF_XDP) when every next hop's MAC is
        // known; otherwise the batch goes through the IP stack, which
        // resolves them (ARP).
        if let Some(table) = state.neighbours.filter(|_| out.sends > 0) {
            let n = out.sends;
            if resolve_macs(table, &out.nodes[..n], &mut out.macs[..n]).is_some() {
                out.sender = state.direct;
            } else {
                out.neighbour_miss = true;
            }
        }
        out
    }

    /// Decapsulates a batch of outer packets (each at offset 0 of its
    /// buffer, as the raw socket receives them; empty buffers are skipped),
    /// the first [`RX_BATCH`] of `bufs`. Each packet accepted is moved so
    /// its inner packet starts at [`HEADROOM`] (the common offset of the
    /// batched TUN write), and its buffer is swapped to the front: the
    /// first [`DecapOutcome::deliver`] buffers are the ones to write. Counts
    /// drops by reason, refused sources and the per-node traffic into
    /// `counts` (`rx_packets` and `rx_bytes` are the TUN write's to count:
    /// only what the device took).
    ///
    /// `outer` says who has checked the outer header checksums: the raw
    /// socket's packets passed the kernel's IP layer
    /// ([`OuterChecksum::VerifiedByKernel`]: not checked again, so record
    /// route and timestamp options the kernel filled in pass); frames no
    /// kernel looked at (AF_XDP) need [`OuterChecksum::Verify`].
    ///
    /// The inner source is checked against `routes` ([`inner_source`]):
    /// never inside this node's own blocks, and with
    /// [`Policy::strict_source`] in a block routed via the outer source (or
    /// the outer source itself).
    pub fn decap(
        &mut self,
        bufs: &mut [PacketBuf],
        policy: &Policy,
        routes: &Lpm<NextHop>,
        outer: OuterChecksum,
        counts: &mut BatchCounts,
    ) -> &DecapOutcome {
        let out = &mut *self.decap;
        let BatchCounts { local, nodes } = counts;
        let received = bufs.len().min(RX_BATCH);
        out.packets = received;
        let mut kept = 0;
        for i in 0..received {
            let buf = &mut bufs[i];
            if buf.is_empty() {
                out.verdicts[i] = Verdict::Skip;
                continue;
            }
            let decapsulated = decapsulate_with(buf.as_mut(), policy, outer).and_then(|d| {
                inner_source(&buf.as_ref()[d.inner.clone()], d.outer_src, policy, routes)
                    .map(|()| d)
            });
            match decapsulated {
                Ok(d) => {
                    let len = d.inner.len();
                    if d.inner.start != HEADROOM {
                        // Outer options: move the inner packet to the common
                        // offset the batched TUN write needs.
                        buf.as_mut().copy_within(d.inner.clone(), HEADROOM);
                    }
                    buf.set_len(HEADROOM + len);
                    nodes.rx(&policy.vias, d.outer_src, len);
                    out.verdicts[i] = Verdict::Deliver {
                        node: d.outer_src,
                        len,
                    };
                    bufs.swap(i, kept);
                    kept += 1;
                }
                Err(reason) => {
                    if reason == DropReason::UnknownSource {
                        nodes.refused_packet(buf.as_ref());
                    }
                    local.drop(reason);
                    out.verdicts[i] = Verdict::Drop(reason);
                }
            }
        }
        out.deliver = kept;
        out
    }
}

/// Checks the source of a decapsulated `inner` packet (a whole IPv4
/// packet, as [`decapsulate_with`] returns it) that `outer_src` sent:
/// - inside this node's own blocks ([`Policy::blocks`]): refused, always
///   ([`DropReason::InnerSourceOwnBlock`]): only this node's pods have
///   those addresses, and they do not send to it through another node;
/// - with [`Policy::strict_source`], it must lie in a block routed via
///   `outer_src` (one LPM lookup), or be `outer_src` itself (the node's
///   own traffic when its tunnel device has no address), else
///   [`DropReason::InnerSourceMismatch`]: a node may not speak for another
///   node's pods.
///
/// # Errors
/// The drop reason.
pub fn inner_source(
    inner: &[u8],
    outer_src: Ipv4Addr,
    policy: &Policy,
    routes: &Lpm<NextHop>,
) -> Result<(), DropReason> {
    let Some(src) = inner.get(12..16) else {
        return Err(DropReason::MalformedInner);
    };
    let src = Ipv4Addr::new(src[0], src[1], src[2], src[3]);
    if outer_src != policy.settings.local && policy.blocks.iter().any(|b| b.contains(src)) {
        return Err(DropReason::InnerSourceOwnBlock);
    }
    if policy.strict_source
        && src != outer_src
        && !routes
            .lookup(src)
            .is_some_and(|hop| policy.routes_via(hop, outer_src))
    {
        return Err(DropReason::InnerSourceMismatch);
    }
    Ok(())
}

/// The outer IPv4 packet of an Ethernet frame from an AF_XDP socket, as the
/// kernel's `ip_rcv` would have handed it to the raw socket: the frame is
/// IPv4 (Ethernet type 0x0800) and its total length, at least a header, fits
/// the frame, whose padding past it is trimmed. `None` for anything else
/// (count it as [`DropReason::MalformedOuter`]). The rest of what `ip_rcv`
/// checks (version, header length, checksum) [`Pipeline::decap`] checks;
/// the XDP program only hands over frames addressed to `tunnel.local`
/// without options or fragmentation.
pub fn underlay_frame(frame: &[u8]) -> Option<&[u8]> {
    const ETH: usize = tunl_io::xdp::ETH_HEADER_LEN;
    let ip = frame.get(ETH..)?;
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    if total < tunl_encap::IPV4_HEADER_LEN {
        return None;
    }
    ip.get(..total)
}

/// What [`underlay_icmp`] made of an ICMP error from the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnderlayVerdict {
    /// Not an error about a packet we sent toward a node we route to (or
    /// not a valid ICMP error quoting IPIP at all): ignored.
    Ignored,
    /// About one of our packets, with nothing to change (counted in
    /// `underlay_icmp`).
    Noted {
        /// The node our packet was going to.
        node: Ipv4Addr,
        /// What the underlay reported.
        error: UnderlayError,
    },
    /// About one of our packets, refused (counted in
    /// `underlay_icmp_refused`, not in `underlay_icmp`).
    Refused {
        /// The node our packet was going to, as the quote says.
        node: Ipv4Addr,
        /// Why.
        why: IcmpRefusal,
    },
    /// A frag-needed that lowers the tunnel MTU toward `node` to `mtu`:
    /// [offer](PathMtu::offer) it (counted in `underlay_icmp`).
    LowerMtu {
        /// The node our packet was going to.
        node: Ipv4Addr,
        /// The tunnel MTU toward it: the reported MTU (at least
        /// [`MIN_PATH_MTU`]) minus the outer header.
        mtu: u16,
    },
}

/// Why [`underlay_icmp`] refused an ICMP error about one of our packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpRefusal {
    /// The quote stops short of the inner header's first 20 bytes (RFC
    /// 2003 §4 asks routers for them), so nothing says the packet was ours:
    /// anyone who knows two node addresses could have written it.
    ShortQuote,
    /// The quoted inner source is not in this node's `tunnel.blocks`.
    NotOurPod,
    /// It would lower the node's path MTU again within
    /// [`PMTU_REDUCTION_INTERVAL`] of the last reduction.
    RateLimited,
}

/// Decides what an ICMP error read from the underlay means (`packet`
/// starts at its IPv4 header): only errors about packets we sent (the
/// quoted source is our local address) toward a node we route to count,
/// and of those only the ones whose quote reaches the inner header and
/// whose inner source is one of this node's pods (in `tunnel.blocks`; any
/// source when no blocks are set, as the kernel's tunl0 checks none);
/// others are [refused](UnderlayVerdict::Refused). A frag-needed lowers the
/// tunnel MTU toward the node when its MTU, clamped at [`MIN_PATH_MTU`] (a
/// spoofed tiny MTU must not cripple every flow toward the node, as the
/// kernel's `min_pmtu`), is below both the tunnel MTU and the one learned
/// at `now`, and the last reduction toward that node is at least
/// [`PMTU_REDUCTION_INTERVAL`] old.
pub fn underlay_icmp(
    packet: &[u8],
    policy: &Policy,
    pmtu: &PathMtu,
    now: Instant,
    local: &mut LocalCounters,
) -> UnderlayVerdict {
    let Some(msg) = tunl_encap::parse_underlay_error(packet) else {
        return UnderlayVerdict::Ignored;
    };
    if msg.outer_src != policy.settings.local || policy.vias.binary_search(&msg.node).is_err() {
        return UnderlayVerdict::Ignored;
    }
    let refused = |local: &mut LocalCounters, why| {
        local.underlay_icmp_refused += 1;
        UnderlayVerdict::Refused {
            node: msg.node,
            why,
        }
    };
    // The source and destination (bytes 12..20) of the inner header.
    let (Some(inner_src), Some(_)) = (msg.inner_src, msg.inner_dst) else {
        return refused(local, IcmpRefusal::ShortQuote);
    };
    if !policy.blocks.is_empty() && !policy.blocks.iter().any(|b| b.contains(inner_src)) {
        return refused(local, IcmpRefusal::NotOurPod);
    }
    match msg.error {
        UnderlayError::FragNeeded { mtu } => {
            let tunnel_mtu = mtu.max(MIN_PATH_MTU) - 20;
            let lower = tunnel_mtu < policy.settings.mtu
                && pmtu
                    .lookup(msg.node, now)
                    .is_none_or(|learned| tunnel_mtu < learned);
            let recent = pmtu
                .lowered_at(msg.node, now)
                .is_some_and(|at| now.saturating_duration_since(at) < PMTU_REDUCTION_INTERVAL);
            if lower && recent {
                return refused(local, IcmpRefusal::RateLimited);
            }
            local.underlay_icmp += 1;
            if lower {
                UnderlayVerdict::LowerMtu {
                    node: msg.node,
                    mtu: tunnel_mtu,
                }
            } else {
                UnderlayVerdict::Noted {
                    node: msg.node,
                    error: msg.error,
                }
            }
        }
        error => {
            local.underlay_icmp += 1;
            UnderlayVerdict::Noted {
                node: msg.node,
                error,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tunl_encap::checksum;
    use tunl_routing::RouteWriter;

    use super::*;
    use crate::dataplane::Shared;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(172, 16, 35, 4);
    const NODE_A: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 5);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(172, 16, 37, 6);
    const STRANGER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    /// A pod on this node, the source of the pod packets.
    const POD: Ipv4Addr = Ipv4Addr::new(10, 20, 42, 31);
    /// Pods behind NODE_A and NODE_B, and one no route covers.
    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 20, 105, 215);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 20, 7, 9);
    const NOWHERE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

    /// An IPv4 UDP packet of `len` bytes (at least 28), DF set.
    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, len: usize, tos: u8, ttl: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[1] = tos;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = ttl;
        p[9] = 17;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        let sum = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    /// `packet` in a buffer at `offset`, as a read would leave it.
    fn buf_at(packet: &[u8], offset: usize) -> PacketBuf {
        let mut b = PacketBuf::with_capacity(offset + packet.len().max(1500));
        b.full_mut()[offset..offset + packet.len()].copy_from_slice(packet);
        b.set_len(offset + packet.len());
        b
    }

    fn pod_packet(dst: Ipv4Addr, len: usize) -> PacketBuf {
        buf_at(&ipv4(POD, dst, len, 0, 64), HEADROOM)
    }

    /// An outer IPIP packet around `inner`.
    fn outer(src: Ipv4Addr, tos: u8, inner: &[u8]) -> PacketBuf {
        let mut p = ipv4(src, LOCAL, 20 + inner.len(), tos, 64);
        p[9] = 4;
        p[20..].copy_from_slice(inner);
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        buf_at(&p, 0)
    }

    struct Fixture {
        shared: Shared,
        _writer: tunl_routing::RouteWriter<NextHop>,
        routes: tunl_routing::RouteReader<NextHop>,
        bucket: Arc<Mutex<TokenBucket>>,
        pipeline: Pipeline,
        counts: BatchCounts,
        now: Instant,
        local_present: bool,
    }

    impl Fixture {
        /// Routes to NODE_A and NODE_B, ICMP at 100/s with a burst of 10.
        fn new() -> Fixture {
            Fixture::with_bucket(TokenBucket::new(100, 10))
        }

        fn with_bucket(bucket: TokenBucket) -> Fixture {
            let mut policy = Policy {
                settings: TunnelSettings::new(LOCAL),
                vias: vec![],
                multipath: Default::default(),
                allow: vec![],
                blocks: vec!["10.20.42.0/26".parse().unwrap()],
                allow_nested: false,
                strict_source: false,
            };
            policy.set_vias([NODE_A, NODE_B]);
            let mut writer = RouteWriter::new();
            let routes = writer.reader();
            writer.insert("10.20.105.192/26".parse().unwrap(), NextHop::Node(NODE_A));
            writer.insert("10.20.7.0/26".parse().unwrap(), NextHop::Node(NODE_B));
            let bucket = Arc::new(Mutex::new(bucket));
            Fixture {
                shared: Shared::new(policy),
                _writer: writer,
                routes,
                pipeline: Pipeline::new(7, IcmpLimit::new(bucket.clone())),
                bucket,
                counts: BatchCounts::default(),
                now: Instant::now(),
                local_present: true,
            }
        }

        fn encap(
            &mut self,
            bufs: &mut [PacketBuf],
            neighbours: Option<&[Neighbour]>,
        ) -> &EncapOutcome {
            let policy = self.shared.policy.load();
            let routes = self.routes.load();
            let state = EncapState {
                policy: &policy,
                routes: &routes,
                pmtu: &self.shared.pmtu,
                neighbours,
                direct: Sender::Packet,
                now: self.now,
                local_present: self.local_present,
            };
            self.pipeline.encap(bufs, &state, &mut self.counts)
        }

        fn decap(&mut self, bufs: &mut [PacketBuf]) -> &DecapOutcome {
            let policy = self.shared.policy.load();
            let routes = self.routes.load();
            self.pipeline.decap(
                bufs,
                &policy,
                &routes,
                OuterChecksum::Verify,
                &mut self.counts,
            )
        }

        fn dropped(&self, reason: DropReason) -> u64 {
            self.counts.local.drops[reason as usize]
        }
    }

    /// The ICMP type, code and the next-hop MTU field of an answer, and its
    /// addresses.
    fn icmp_fields(answer: &IcmpAnswer) -> (u8, u8, u16, Ipv4Addr, Ipv4Addr) {
        let p = answer.packet();
        assert!(checksum::verify_header(&p[..20]), "IP checksum");
        assert!(checksum::verify(&p[20..]), "ICMP checksum");
        let addr = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
        (
            p[20],
            p[21],
            u16::from_be_bytes([p[26], p[27]]),
            addr(12),
            addr(16),
        )
    }

    #[test]
    fn no_route_gives_net_unreachable() {
        let mut f = Fixture::new();
        let mut bufs = [pod_packet(NOWHERE, 100), pod_packet(POD_A, 100)];
        let out = f.encap(&mut bufs, None);
        assert_eq!(out.verdicts()[0], Verdict::Drop(DropReason::NoRoute));
        assert!(matches!(
            out.verdicts()[1],
            Verdict::Send { node: NODE_A, .. }
        ));
        let answers: Vec<_> = out.icmp().iter().collect();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].about(), 0);
        // Net unreachable (3/0), from the unreachable destination to the pod.
        assert_eq!(icmp_fields(answers[0]), (3, 0, 0, NOWHERE, POD));
        assert_eq!(f.dropped(DropReason::NoRoute), 1);
        assert_eq!(f.counts.local.icmp_rate_limited, 0);
    }

    #[test]
    fn nothing_is_sent_from_a_local_address_the_node_lost() {
        let mut f = Fixture::new();
        f.local_present = false;
        let mut bufs = [pod_packet(POD_A, 100), pod_packet(NOWHERE, 100)];
        let out = f.encap(&mut bufs, None);
        assert_eq!(out.verdicts()[0], Verdict::Drop(DropReason::NoLocalAddress));
        assert_eq!(out.verdicts()[1], Verdict::Drop(DropReason::NoRoute));
        assert!(out.transmits().is_empty());
        let answers: Vec<_> = out.icmp().iter().map(icmp_fields).collect();
        // Host unreachable from the destination, net unreachable.
        assert_eq!(answers, [(3, 1, 0, POD_A, POD), (3, 0, 0, NOWHERE, POD)]);
        assert_eq!(f.dropped(DropReason::NoLocalAddress), 1);
        assert_eq!(f.counts.local.tx_bytes, 0);
        f.local_present = true;
        let mut bufs = [pod_packet(POD_A, 100)];
        assert!(matches!(
            f.encap(&mut bufs, None).verdicts()[0],
            Verdict::Send { .. }
        ));
    }

    #[test]
    fn too_big_gives_frag_needed_at_the_learned_mtu() {
        let mut f = Fixture::new();
        f.shared.pmtu.offer(NODE_A, 1380);
        f.shared.pmtu.maintain(f.now);
        let mut bufs = [
            pod_packet(POD_A, 1400),
            pod_packet(POD_B, 1400),
            pod_packet(POD_A, 1380),
            pod_packet(POD_B, 1481),
        ];
        let out = f.encap(&mut bufs, None);
        assert_eq!(out.verdicts()[0], Verdict::Drop(DropReason::TooBig));
        assert!(
            matches!(out.verdicts()[1], Verdict::Send { node: NODE_B, .. }),
            "other node: tunnel MTU"
        );
        assert!(
            matches!(out.verdicts()[2], Verdict::Send { node: NODE_A, .. }),
            "fits the learned MTU"
        );
        assert_eq!(out.verdicts()[3], Verdict::Drop(DropReason::TooBig));
        let answers: Vec<_> = out
            .icmp()
            .iter()
            .map(|a| (a.about(), icmp_fields(a)))
            .collect();
        assert_eq!(
            answers,
            [(0, (3, 4, 1380, POD_A, POD)), (3, (3, 4, 1480, POD_B, POD))]
        );
        assert_eq!(f.dropped(DropReason::TooBig), 2);
        // Once the learned MTU expires, the tunnel MTU holds again.
        f.now += crate::dataplane::pmtu::PMTU_EXPIRES;
        let mut bufs = [pod_packet(POD_A, 1400)];
        let out = f.encap(&mut bufs, None);
        assert!(matches!(
            out.verdicts()[0],
            Verdict::Send { node: NODE_A, .. }
        ));
    }

    #[test]
    fn encap_writes_the_outer_header_and_lists_the_transmits() {
        let mut f = Fixture::new();
        let mut bufs = [
            pod_packet(POD_B, 100),
            pod_packet(NOWHERE, 60),
            pod_packet(POD_A, 84),
        ];
        let out = f.encap(&mut bufs, None);
        assert_eq!(
            out.transmits(),
            [Transmit { buf: 0, start: 0 }, Transmit { buf: 2, start: 0 }]
        );
        assert_eq!(out.nodes(), [NODE_B, NODE_A]);
        assert_eq!(out.sender(), Sender::Raw);
        assert!(!out.neighbour_miss(), "no packet_tx: nothing to report");
        let outer = bufs[2].as_ref();
        assert_eq!(outer.len(), 104);
        assert_eq!(outer[9], 4, "IPIP");
        assert_eq!(&outer[12..16], &LOCAL.octets());
        assert_eq!(&outer[16..20], &NODE_A.octets());
        assert_eq!(f.counts.local.tx_bytes, 184);
        f.counts
            .nodes
            .flush(&f.shared.policy.load().vias, &f.shared.nodes);
        let traffic = f.shared.nodes.traffic();
        assert_eq!(
            (traffic[&NODE_A].tx_packets, traffic[&NODE_A].tx_bytes),
            (1, 84)
        );
        assert_eq!(
            (traffic[&NODE_B].tx_packets, traffic[&NODE_B].tx_bytes),
            (1, 100)
        );
    }

    #[test]
    fn af_packet_when_every_mac_is_known_else_raw_and_a_miss() {
        let mut f = Fixture::new();
        let both: &[Neighbour] = &[(NODE_A, [0xa; 6]), (NODE_B, [0xb; 6])];
        let only_a: &[Neighbour] = &[(NODE_A, [0xa; 6])];
        let batch = || {
            [
                pod_packet(POD_A, 100),
                pod_packet(POD_B, 100),
                pod_packet(POD_A, 100),
            ]
        };

        let out = f.encap(&mut batch(), Some(both));
        assert_eq!(out.sender(), Sender::Packet);
        assert_eq!(out.macs(), [[0xa; 6], [0xb; 6], [0xa; 6]]);
        assert!(!out.neighbour_miss());

        let out = f.encap(&mut batch(), Some(only_a));
        assert_eq!(out.sender(), Sender::Raw, "NODE_B's MAC is unknown");
        assert!(out.neighbour_miss());
        assert_eq!(out.nodes(), [NODE_A, NODE_B, NODE_A]);

        let mut a_only = [pod_packet(POD_A, 100)];
        let out = f.encap(&mut a_only, Some(only_a));
        assert_eq!(out.sender(), Sender::Packet);

        // Nothing to send: no socket to choose, no miss to report.
        let mut none = [pod_packet(NOWHERE, 100)];
        let out = f.encap(&mut none, Some(&[]));
        assert_eq!((out.sender(), out.neighbour_miss()), (Sender::Raw, false));
    }

    #[test]
    fn the_link_layer_sender_is_the_states() {
        let mut f = Fixture::new();
        let both: &[Neighbour] = &[(NODE_A, [0xa; 6]), (NODE_B, [0xb; 6])];
        let policy = f.shared.policy.load();
        let routes = f.routes.load();
        let state = EncapState {
            policy: &policy,
            routes: &routes,
            pmtu: &f.shared.pmtu,
            neighbours: Some(both),
            direct: Sender::Xdp,
            now: f.now,
            local_present: true,
        };
        let mut bufs = [pod_packet(POD_A, 100)];
        let out = f.pipeline.encap(&mut bufs, &state, &mut f.counts);
        assert_eq!(out.sender(), Sender::Xdp);
        assert_eq!(out.macs(), [[0xa; 6]]);
        let state = EncapState {
            neighbours: Some(&both[1..]),
            ..state
        };
        let out = f.pipeline.encap(&mut bufs, &state, &mut f.counts);
        assert_eq!(out.sender(), Sender::Raw, "NODE_A's MAC unknown");
        assert!(out.neighbour_miss());
    }

    #[test]
    fn underlay_frames_are_trimmed_to_the_outer_total_length() {
        let inner = ipv4(POD_A, POD, 28, 0, 63);
        let packet = outer(NODE_A, 0, &inner);
        let packet = packet.as_ref();
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(packet);
        assert_eq!(underlay_frame(&frame), Some(packet));
        // Ethernet padding (a 60-byte minimum frame) is not part of it.
        let mut padded = frame.clone();
        padded.resize(packet.len() + 14 + 12, 0xee);
        assert_eq!(underlay_frame(&padded), Some(packet));
        // A total length past the frame, below a header, or not IPv4.
        let mut long = frame.clone();
        long[16..18].copy_from_slice(&((packet.len() + 1) as u16).to_be_bytes());
        assert_eq!(underlay_frame(&long), None);
        let mut short = frame.clone();
        short[16..18].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(underlay_frame(&short), None);
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(underlay_frame(&arp), None);
        assert_eq!(underlay_frame(&frame[..15]), None);
        // What it returns goes through decap's own outer checks.
        let mut f = Fixture::new();
        let mut bufs = [buf_at(underlay_frame(&padded).unwrap(), 0)];
        assert_eq!(f.decap(&mut bufs).deliver(), 1);
    }

    #[test]
    fn an_inner_source_in_our_own_blocks_from_another_node_is_always_refused() {
        for strict in [false, true] {
            let mut f = Fixture::new();
            let mut policy = Policy::clone(&f.shared.policy.load());
            policy.strict_source = strict;
            f.shared.policy.store(Arc::new(policy));
            // POD is in this node's block 10.20.42.0/26.
            let own = ipv4(Ipv4Addr::new(10, 20, 42, 7), POD, 84, 0, 63);
            let theirs = ipv4(POD_A, POD, 84, 0, 63);
            let mut bufs = [outer(NODE_A, 0, &own), outer(NODE_A, 0, &theirs)];
            let out = f.decap(&mut bufs);
            assert_eq!(
                out.verdicts(),
                [
                    Verdict::Drop(DropReason::InnerSourceOwnBlock),
                    Verdict::Deliver {
                        node: NODE_A,
                        len: 84
                    }
                ],
                "strict_source = {strict}"
            );
            assert_eq!(out.deliver(), 1);
            assert_eq!(f.dropped(DropReason::InnerSourceOwnBlock), 1);
            assert_eq!(f.dropped(DropReason::InnerSourceMismatch), 0);
        }
    }

    #[test]
    fn strict_source_wants_a_block_routed_via_the_sender() {
        let deliver = |node| Verdict::Deliver { node, len: 84 };
        let batch = || {
            [
                // A's pod from A, B's pod from B: routed via their senders.
                outer(NODE_A, 0, &ipv4(POD_A, POD, 84, 0, 63)),
                outer(NODE_B, 0, &ipv4(POD_B, POD, 84, 0, 63)),
                // B speaking for A's pod, A for a source no route covers.
                outer(NODE_B, 0, &ipv4(POD_A, POD, 84, 0, 63)),
                outer(NODE_A, 0, &ipv4(NOWHERE, POD, 84, 0, 63)),
                // A node's own traffic, from its underlay address.
                outer(NODE_A, 0, &ipv4(NODE_A, POD, 84, 0, 63)),
            ]
        };
        // Off: every one of them goes through.
        let mut f = Fixture::new();
        let mut bufs = batch();
        let out = f.decap(&mut bufs);
        assert_eq!(
            out.verdicts(),
            [NODE_A, NODE_B, NODE_B, NODE_A, NODE_A].map(deliver)
        );
        // On: the two that speak for others are refused under their reason.
        let mut policy = Policy::clone(&f.shared.policy.load());
        policy.strict_source = true;
        f.shared.policy.store(Arc::new(policy));
        let mut bufs = batch();
        let out = f.decap(&mut bufs);
        let refused = Verdict::Drop(DropReason::InnerSourceMismatch);
        assert_eq!(
            out.verdicts(),
            [
                deliver(NODE_A),
                deliver(NODE_B),
                refused,
                refused,
                deliver(NODE_A)
            ]
        );
        assert_eq!(out.deliver(), 3);
        assert_eq!(f.dropped(DropReason::InnerSourceMismatch), 2);
        // The kept buffers are the delivered ones, inner packet at HEADROOM.
        let sources: Vec<[u8; 4]> = bufs[..3]
            .iter()
            .map(|b| b.as_ref()[HEADROOM + 12..HEADROOM + 16].try_into().unwrap())
            .collect();
        assert_eq!(sources, [POD_A, POD_B, NODE_A].map(|a| a.octets()).to_vec());
        // A route moved to B moves the check with it.
        f._writer
            .insert("10.20.105.192/26".parse().unwrap(), NextHop::Node(NODE_B));
        let mut bufs = [
            outer(NODE_B, 0, &ipv4(POD_A, POD, 84, 0, 63)),
            outer(NODE_A, 0, &ipv4(POD_A, POD, 84, 0, 63)),
        ];
        assert_eq!(f.decap(&mut bufs).verdicts(), [deliver(NODE_B), refused]);
    }

    #[test]
    fn unknown_sources_are_refused_counted_and_recorded() {
        let mut f = Fixture::new();
        let inner = ipv4(POD_A, POD, 84, 0, 63);
        let mut bufs = [
            outer(STRANGER, 0, &inner),
            outer(NODE_A, 0, &inner),
            outer(STRANGER, 0, &inner),
            PacketBuf::with_capacity(64),
        ];
        let out = f.decap(&mut bufs);
        assert_eq!(
            out.verdicts(),
            [
                Verdict::Drop(DropReason::UnknownSource),
                Verdict::Deliver {
                    node: NODE_A,
                    len: 84
                },
                Verdict::Drop(DropReason::UnknownSource),
                Verdict::Skip,
            ]
        );
        assert_eq!(out.deliver(), 1);
        assert_eq!(
            &bufs[0].as_ref()[HEADROOM..],
            &inner[..],
            "delivered first, at HEADROOM"
        );
        assert_eq!(f.dropped(DropReason::UnknownSource), 2);
        assert_eq!(f.counts.local.rx_bytes, 0, "counted by the TUN write");
        f.counts
            .nodes
            .flush(&f.shared.policy.load().vias, &f.shared.nodes);
        let refused = f.shared.nodes.refused();
        assert_eq!(refused.sources.len(), 1);
        assert_eq!(
            (refused.sources[0].source, refused.sources[0].packets),
            (STRANGER, 2)
        );
        assert_eq!(f.shared.nodes.traffic()[&NODE_A].rx_packets, 1);
    }

    #[test]
    fn ttl_and_ecn() {
        let mut f = Fixture::new();
        // Encap: inner TTL 0 is dropped; CE inside gives ECT(0) outside.
        let mut bufs = [
            buf_at(&ipv4(POD, POD_A, 100, 0, 0), HEADROOM),
            buf_at(&ipv4(POD, POD_A, 100, 0b11, 64), HEADROOM),
        ];
        let out = f.encap(&mut bufs, None);
        assert_eq!(out.verdicts()[0], Verdict::Drop(DropReason::TtlExpired));
        assert!(matches!(out.verdicts()[1], Verdict::Send { .. }));
        assert_eq!(bufs[1].as_ref()[1] & 0b11, 0b10, "outer ECT(0)");
        assert_eq!(
            bufs[1].as_ref()[HEADROOM + 1] & 0b11,
            0b11,
            "inner still CE"
        );
        assert!(out.icmp().is_empty());
        assert_eq!(f.dropped(DropReason::TtlExpired), 1);

        // Decap: CE over Not-ECT is dropped; CE over ECT(0) marks the inner CE;
        // inner TTL 0 is dropped.
        let mut bufs = [
            outer(NODE_A, 0b11, &ipv4(POD_A, POD, 84, 0b00, 63)),
            outer(NODE_A, 0b11, &ipv4(POD_A, POD, 84, 0b10, 63)),
            outer(NODE_A, 0, &ipv4(POD_A, POD, 84, 0, 0)),
        ];
        let out = f.decap(&mut bufs);
        assert_eq!(
            out.verdicts(),
            [
                Verdict::Drop(DropReason::EcnDrop),
                Verdict::Deliver {
                    node: NODE_A,
                    len: 84
                },
                Verdict::Drop(DropReason::TtlExpired),
            ]
        );
        assert_eq!(
            bufs[0].as_ref()[HEADROOM + 1] & 0b11,
            0b11,
            "inner marked CE"
        );
        assert_eq!(f.dropped(DropReason::EcnDrop), 1);
        assert_eq!(f.dropped(DropReason::TtlExpired), 2);
    }

    #[test]
    fn icmp_answers_are_rate_limited() {
        // The bucket's burst of 10 limits first.
        let mut f = Fixture::new();
        let mut bufs: Vec<_> = (0..30).map(|_| pod_packet(NOWHERE, 60)).collect();
        let out = f.encap(&mut bufs, None);
        assert_eq!(out.icmp().len(), 10);
        assert_eq!(f.counts.local.icmp_rate_limited, 20);
        // Refused, the worker stays off the bucket for a token's time (10 ms);
        // after it, one more token.
        f.counts.local.icmp_rate_limited = 0;
        f.now += Duration::from_millis(5);
        let out = f.encap(&mut bufs[..2], None);
        assert!(out.icmp().is_empty());
        f.now += Duration::from_millis(10);
        let out = f.encap(&mut bufs[..2], None);
        assert_eq!(out.icmp().len(), 1);
        assert_eq!(f.counts.local.icmp_rate_limited, 3);

        // A bucket with room for more: the answer slots limit.
        let mut f = Fixture::with_bucket(TokenBucket::new(1000, 100));
        let mut bufs: Vec<_> = (0..30).map(|_| pod_packet(NOWHERE, 60)).collect();
        let out = f.encap(&mut bufs, None);
        assert_eq!(out.icmp().len(), ICMP_ANSWERS);
        let about: Vec<_> = out.icmp().iter().map(|a| a.about()).collect();
        assert_eq!(about, (0..ICMP_ANSWERS).collect::<Vec<_>>());
        assert_eq!(f.counts.local.icmp_rate_limited, (30 - ICMP_ANSWERS) as u64);
        // Slots beyond the answers did not take tokens: 100 - 16 are left.
        let mut bucket = f.bucket.lock().unwrap();
        assert_eq!(
            (0..100).filter(|_| bucket.allow(f.now)).count(),
            100 - ICMP_ANSWERS
        );
    }

    /// An ICMP error (3/4 when `mtu` is Some, else 3/1) from a router about
    /// an outer packet `from` -> `to` carrying a packet of this node's pod,
    /// quoting the outer header and 28 bytes of the inner packet.
    fn underlay_error(from: Ipv4Addr, to: Ipv4Addr, mtu: Option<u16>) -> Vec<u8> {
        underlay_error_quoting(from, to, mtu, POD, 28)
    }

    /// [`underlay_error`] whose inner packet comes from `inner_src`, with
    /// `inner_quote` bytes of it quoted.
    fn underlay_error_quoting(
        from: Ipv4Addr,
        to: Ipv4Addr,
        mtu: Option<u16>,
        inner_src: Ipv4Addr,
        inner_quote: usize,
    ) -> Vec<u8> {
        let mut quoted = ipv4(from, to, 1500, 0, 64);
        quoted[9] = 4;
        quoted[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&quoted[..20]);
        quoted[10..12].copy_from_slice(&sum.to_be_bytes());
        quoted[20..20 + 28].copy_from_slice(&ipv4(inner_src, POD_A, 1480, 0, 64)[..28]);
        let code = if mtu.is_some() { 4 } else { 1 };
        let mut icmp = vec![3, code, 0, 0, 0, 0];
        icmp.extend_from_slice(&mtu.unwrap_or(0).to_be_bytes());
        icmp.extend_from_slice(&quoted[..20 + inner_quote]);
        let sum = checksum::checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut p = ipv4(Ipv4Addr::new(172, 16, 0, 1), from, 20 + icmp.len(), 0, 64);
        p[9] = 1;
        p[20..].copy_from_slice(&icmp);
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    #[test]
    fn underlay_errors_must_quote_one_of_our_pods_and_reductions_are_spaced() {
        let f = Fixture::new();
        let policy = f.shared.policy.load();
        let pmtu = &f.shared.pmtu;
        let mut local = LocalCounters::default();
        let mut verdict =
            |packet: &[u8], now| underlay_icmp(packet, &policy, pmtu, now, &mut local);
        let refused = |why| UnderlayVerdict::Refused { node: NODE_A, why };
        let t0 = f.now;
        for (quote, why) in [
            (0, "the outer header only"),
            (8, "8 bytes of the inner header"),
            (19, "one byte short of its addresses"),
        ] {
            let p = underlay_error_quoting(LOCAL, NODE_A, Some(1400), POD, quote);
            assert_eq!(verdict(&p, t0), refused(IcmpRefusal::ShortQuote), "{why}");
        }
        let stranger_pod = underlay_error_quoting(LOCAL, NODE_A, Some(1400), POD_A, 20);
        assert_eq!(verdict(&stranger_pod, t0), refused(IcmpRefusal::NotOurPod));
        let unreachable = underlay_error_quoting(LOCAL, NODE_A, None, POD_A, 20);
        assert_eq!(
            verdict(&unreachable, t0),
            refused(IcmpRefusal::NotOurPod),
            "not a frag-needed: refused all the same"
        );
        // Exactly the inner addresses quoted is enough.
        let whole = underlay_error_quoting(LOCAL, NODE_A, Some(1400), POD, 20);
        assert_eq!(
            verdict(&whole, t0),
            UnderlayVerdict::LowerMtu {
                node: NODE_A,
                mtu: 1380
            }
        );
        assert!(pmtu.offer(NODE_A, 1380));
        pmtu.maintain(t0);
        // Lower again within the second: refused; noted when not lower; after
        // the second, lowered.
        let lower = underlay_error(LOCAL, NODE_A, Some(1300));
        let t = t0 + Duration::from_millis(500);
        assert_eq!(verdict(&lower, t), refused(IcmpRefusal::RateLimited));
        assert!(matches!(
            verdict(&underlay_error(LOCAL, NODE_A, Some(1450)), t),
            UnderlayVerdict::Noted { .. }
        ));
        let t = t0 + PMTU_REDUCTION_INTERVAL;
        assert_eq!(
            verdict(&lower, t),
            UnderlayVerdict::LowerMtu {
                node: NODE_A,
                mtu: 1280
            }
        );
        // Another node's reductions are its own.
        assert!(matches!(
            verdict(&underlay_error(LOCAL, NODE_B, Some(1300)), t0),
            UnderlayVerdict::LowerMtu { node: NODE_B, .. }
        ));
        assert_eq!(local.underlay_icmp_refused, 6);
        assert_eq!(local.underlay_icmp, 4);

        // Without tunnel.blocks, any inner source (as the kernel's tunl0);
        // the quote must still reach it.
        let mut open = Policy::clone(&policy);
        open.blocks.clear();
        let mut local = LocalCounters::default();
        let pm = PathMtu::default();
        assert!(matches!(
            underlay_icmp(&stranger_pod, &open, &pm, t0, &mut local),
            UnderlayVerdict::LowerMtu { .. }
        ));
        let short = underlay_error_quoting(LOCAL, NODE_A, Some(1400), POD, 8);
        assert_eq!(
            underlay_icmp(&short, &open, &pm, t0, &mut local),
            refused(IcmpRefusal::ShortQuote)
        );
    }

    #[test]
    fn underlay_frag_needed_lowers_the_path_mtu_of_our_nodes_only() {
        let f = Fixture::new();
        let policy = f.shared.policy.load();
        let pmtu = &f.shared.pmtu;
        let mut local = LocalCounters::default();
        let mut verdict = |packet: &[u8]| underlay_icmp(packet, &policy, pmtu, f.now, &mut local);

        assert_eq!(
            verdict(&underlay_error(LOCAL, NODE_A, Some(1400))),
            UnderlayVerdict::LowerMtu {
                node: NODE_A,
                mtu: 1380
            }
        );
        // A tiny (maybe spoofed) MTU is clamped at 552.
        assert_eq!(
            verdict(&underlay_error(LOCAL, NODE_B, Some(300))),
            UnderlayVerdict::LowerMtu {
                node: NODE_B,
                mtu: MIN_PATH_MTU - 20
            }
        );
        // Not about our packet, or not toward a node we route to: ignored.
        assert_eq!(
            verdict(&underlay_error(STRANGER, NODE_A, Some(1400))),
            UnderlayVerdict::Ignored
        );
        assert_eq!(
            verdict(&underlay_error(LOCAL, STRANGER, Some(1400))),
            UnderlayVerdict::Ignored
        );
        assert_eq!(verdict(b"not ICMP"), UnderlayVerdict::Ignored);
        // No lower than the tunnel MTU: noted only.
        assert_eq!(
            verdict(&underlay_error(LOCAL, NODE_A, Some(1500))),
            UnderlayVerdict::Noted {
                node: NODE_A,
                error: UnderlayError::FragNeeded { mtu: 1500 }
            }
        );
        assert_eq!(
            verdict(&underlay_error(LOCAL, NODE_A, None)),
            UnderlayVerdict::Noted {
                node: NODE_A,
                error: UnderlayError::Unreachable { code: 1 }
            }
        );
        // Once the control plane has applied 1380, only lower ones count
        // (a second later: reductions toward one node are spaced).
        assert!(pmtu.offer(NODE_A, 1380));
        assert_eq!(pmtu.maintain(f.now - PMTU_REDUCTION_INTERVAL), 1);
        assert_eq!(
            verdict(&underlay_error(LOCAL, NODE_A, Some(1450))),
            UnderlayVerdict::Noted {
                node: NODE_A,
                error: UnderlayError::FragNeeded { mtu: 1450 }
            }
        );
        assert_eq!(
            verdict(&underlay_error(LOCAL, NODE_A, Some(1300))),
            UnderlayVerdict::LowerMtu {
                node: NODE_A,
                mtu: 1280
            }
        );
        assert_eq!(
            local.underlay_icmp, 6,
            "every error about our packets toward our nodes"
        );
    }

    #[test]
    fn icmp_limit_never_allows_more_than_the_shared_bucket() {
        let bucket = Arc::new(Mutex::new(TokenBucket::new(100, 10)));
        let mut workers = [IcmpLimit::new(bucket.clone()), IcmpLimit::new(bucket)];
        let start = Instant::now();
        let mut allowed = 0;
        // Two workers asking every 50 µs for one second.
        for step in 0..20_000u32 {
            let now = start + Duration::from_micros(50) * step;
            if workers[(step % 2) as usize].allow(now) {
                allowed += 1;
            }
        }
        // The burst of 10, then 100 per second.
        assert!((100..=111).contains(&allowed), "{allowed}");
    }

    #[test]
    fn icmp_limit_stays_off_the_lock_for_a_token_after_a_refusal() {
        // 100 per second: one token every 10 ms.
        let bucket = Arc::new(Mutex::new(TokenBucket::new(100, 1)));
        let mut limit = IcmpLimit::new(bucket.clone());
        let t0 = Instant::now();
        assert!(limit.allow(t0));
        assert!(!limit.allow(t0));
        // Refilled behind the worker's back: a refusal at 5 ms comes from
        // the worker alone, which did not ask the bucket.
        *bucket.lock().unwrap() = TokenBucket::new(100, 1);
        assert!(!limit.allow(t0 + Duration::from_millis(5)));
        assert!(bucket.lock().unwrap().allow(t0 + Duration::from_millis(5)));
        assert!(limit.allow(t0 + Duration::from_millis(20)));
    }
}
