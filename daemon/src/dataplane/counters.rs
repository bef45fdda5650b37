//! Dataplane counters: one set per worker thread, summed on read.
//!
//! A worker adds into a plain [`LocalCounters`] while it handles a batch and
//! flushes it into its shared [`Counters`] once per batch, so the hot path
//! touches no shared cache line per packet.
//!
//! Drops come in two kinds. The pipeline's decisions about a packet (no
//! route, too big, unknown source, ...) are counted by [`DropReason`] in
//! `drops`, and only those make up `drops_total`
//! ([`CounterSnapshot::total_drops`]). Packets lost to I/O are counted
//! apart, each in its own unit: `tx_errors`, `tx_buffer_full` (outer
//! packets), `rx_tun_full`, `rx_tun_down`, `rx_oversize` (inner packets or
//! super-packets),
//! `rx_truncated` (outer packets), `tun_split_errors` (TUN reads, each of
//! which may have held a whole TSO burst). Folding them into
//! `drops_total` would add unlike units and make a reason-less share of
//! the total, while the `reason` label of `tunl_drops_total` could not say
//! which.

use std::sync::atomic::{AtomicU64, Ordering};

use tunl_encap::DropReason;

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// One worker's counters, readable from any thread.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// Packets dropped, by reason (indexed by `DropReason as usize`).
            pub drops: [AtomicU64; DropReason::COUNT],
        }

        /// A worker's unflushed counts for the batch in hand.
        #[derive(Debug, Default, Clone, Copy)]
        pub struct LocalCounters {
            $($(#[doc = $doc])* pub $name: u64,)*
            /// Packets dropped, by reason.
            pub drops: [u64; DropReason::COUNT],
        }

        /// A point-in-time sum of counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct CounterSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
            /// Packets dropped, by reason.
            pub drops: [u64; DropReason::COUNT],
        }

        impl Counters {
            /// Adds `local` into these counters and zeroes it.
            pub fn flush(&self, local: &mut LocalCounters) {
                $(if local.$name != 0 {
                    self.$name.fetch_add(local.$name, Ordering::Relaxed);
                })*
                for (shared, n) in self.drops.iter().zip(local.drops.iter()) {
                    if *n != 0 {
                        shared.fetch_add(*n, Ordering::Relaxed);
                    }
                }
                *local = LocalCounters::default();
            }

            /// Adds these counters into `sum`.
            pub fn add_to(&self, sum: &mut CounterSnapshot) {
                $(sum.$name += self.$name.load(Ordering::Relaxed);)*
                for (s, c) in sum.drops.iter_mut().zip(self.drops.iter()) {
                    *s += c.load(Ordering::Relaxed);
                }
            }
        }

        impl CounterSnapshot {
            /// `(name, value)` for every counter except drops, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }

            /// `(name, description)` for every counter except drops, in
            /// declaration order: the doc comments above, on one line.
            pub fn descriptions() -> Vec<(&'static str, String)> {
                vec![$((
                    stringify!($name),
                    [$($doc),*].iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "),
                ),)*]
            }

            /// Every counter as `name=value`, space-separated (for logs).
            pub fn to_line(&self) -> String {
                self.fields()
                    .iter()
                    .map(|(name, v)| format!("{name}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    };
}

counters! {
    /// Inner packets encapsulated and handed to the underlay.
    tx_packets,
    /// Inner bytes of the packets encapsulated for the underlay (counted
    /// before the send, so it includes packets later refused by the socket,
    /// which `tx_errors` counts).
    tx_bytes,
    /// Inner packets decapsulated and written to the TUN device.
    rx_packets,
    /// Inner bytes decapsulated for the TUN device (counted before the
    /// write, so, like `tx_bytes`, they include packets the device then
    /// refused: `rx_tun_full`, `rx_oversize`).
    rx_bytes,
    /// Outer packets the underlay socket refused (per-packet send errors).
    tx_errors,
    /// Decapsulated packets the TUN device did not take (queue full).
    rx_tun_full,
    /// Decapsulated packets dropped because the TUN device was down (`ip
    /// link set tunl0 down`, as an administrator may do; tunl logs it once
    /// and delivers again once the device is up).
    rx_tun_down,
    /// Packets received truncated from the raw socket (buffer too small).
    rx_truncated,
    /// ICMP errors tunl generated (frag-needed, unreachable).
    icmp_sent,
    /// ICMP errors not sent because of the rate limit.
    icmp_rate_limited,
    /// ICMP errors from the underlay about our outer packets.
    underlay_icmp,
    /// ICMP errors from the underlay naming our packets to one of our
    /// nodes that tunl refused: the quote stops short of the inner header
    /// (RFC 2003 §4), its inner source is not one of this node's pods, or
    /// it would lower a node's path MTU again within a second.
    underlay_icmp_refused,
    /// Path MTU reductions learned from underlay frag-needed messages (as
    /// the control plane applies them; the workers only offer them).
    pmtu_updates,
    /// Decapsulated super-packets (underlay GRO) written to TUN as one GSO
    /// frame each; their segments count in `rx_packets`.
    rx_gso,
    /// Decapsulated super-packets that could not be written as GSO frames
    /// (not TCP, or offload off): dropped.
    rx_oversize,
    /// Outer packets the underlay device dropped (`ENOBUFS`, a full veth
    /// ring) and that were sent again.
    tx_retries,
    /// Outer packets sent through the AF_PACKET socket (`[dataplane]
    /// underlay = "packet"`, or a worker without an AF_XDP socket under
    /// `"xdp"`); the rest of `tx_packets` took the raw IP socket or AF_XDP.
    tx_af_packet,
    /// Outer packets sent through an AF_XDP socket (`[dataplane] underlay
    /// = "xdp"`); the rest of `tx_packets` took the raw IP socket (a next
    /// hop whose MAC was not known yet) or AF_PACKET.
    tx_xdp,
    /// Outer packets received through an AF_XDP socket; the rest of the
    /// received ones came through the raw IPIP socket.
    rx_xdp,
    /// Outer packets not sent because the underlay socket's send buffer
    /// stayed full after one short wait (at most 100 µs per batch); not
    /// counted in `tx_errors`.
    tx_buffer_full,
    /// TUN reads that could not be split into packets (a malformed
    /// virtio-net offload header from the kernel): whatever the read held
    /// is lost, the queue stays usable.
    tun_split_errors,
    /// Polls a worker made without sleeping because it was inside its
    /// busy-poll window after its last packet (`[dataplane]
    /// busy_poll_us`); stays 0 with busy polling off.
    busy_polls,
    /// Timer sleeps a worker took under load instead of blocking in epoll
    /// (`[dataplane] poll_interval_us`); grows while traffic flows, stands
    /// still once the workers block again.
    timer_polls,
    /// Times a worker that polled on the timer went back to blocking in
    /// epoll after a quiet spell without packets (`[dataplane]
    /// poll_quiet_us`).
    poll_blocks,
}

impl LocalCounters {
    /// Counts one dropped packet.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
}

impl CounterSnapshot {
    /// Total dropped packets over all reasons (`drops_total`): the
    /// pipeline's drops only, not the I/O losses counted apart (see the
    /// module documentation).
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// `(reason, count)` for every drop reason.
    pub fn drops_by_reason(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops[*r as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_and_sum() {
        let a = Counters::default();
        let b = Counters::default();
        let mut local = LocalCounters {
            tx_packets: 3,
            tx_bytes: 300,
            ..Default::default()
        };
        local.drop(DropReason::NoRoute);
        a.flush(&mut local);
        assert_eq!(local.tx_packets, 0, "flush zeroes the local counts");
        local.rx_packets = 2;
        local.drop(DropReason::NoRoute);
        local.drop(DropReason::UnknownSource);
        b.flush(&mut local);
        let mut sum = CounterSnapshot::default();
        a.add_to(&mut sum);
        b.add_to(&mut sum);
        assert_eq!(sum.tx_packets, 3);
        assert_eq!(sum.tx_bytes, 300);
        assert_eq!(sum.rx_packets, 2);
        assert_eq!(sum.drops[DropReason::NoRoute as usize], 2);
        assert_eq!(sum.drops[DropReason::UnknownSource as usize], 1);
        assert_eq!(sum.total_drops(), 3);
        assert!(
            sum.to_line()
                .starts_with("tx_packets=3 tx_bytes=300 rx_packets=2 ")
        );
    }

    #[test]
    fn every_counter_has_a_one_line_description() {
        let d = CounterSnapshot::descriptions();
        assert_eq!(d.len(), CounterSnapshot::default().fields().len());
        for (name, text) in &d {
            assert!(text.len() > 10 && !text.contains('\n'), "{name}: {text:?}");
        }
        let ops = include_str!("../../../docs/operating.md");
        for (name, _) in &d {
            assert!(
                ops.contains(&format!("`{name}`")),
                "docs/operating.md lacks {name}"
            );
        }
        let rx_bytes = &d.iter().find(|(n, _)| *n == "rx_bytes").unwrap().1;
        assert!(
            rx_bytes.starts_with("Inner bytes decapsulated"),
            "{rx_bytes}"
        );
    }
}
