//! Fuzzes the TUN write path of decapsulated packets, sans I/O: a batch of
//! inner packets (each one that decap accepts, placed as the pipeline places
//! it) goes through the steps of `tunl_io::TunQueue::send_batch` with offload
//! on, minus the `write()`: super-packets (longer than the device MTU) get
//! their virtio-net header from `tcp4_gso_header`, or else are written as
//! they are when `oversize_writes_as_is` says so (a datagram reassembled
//! from outer fragments), the runs between them are coalesced by tun-rs
//! GRO, and every frame written is counted with `gso_segments`. Also the
//! three GSO functions on the raw input.
//!
//! Asserts:
//! - `tcp4_gso_header`: on `None` nothing is modified; on `Some(n)` the IPv4
//!   header is whole and verifies, the virtio-net header describes the
//!   packet (`gso_segments` gives `n`, segments fit the MTU) and the seeded
//!   TCP checksum completes to a correct one;
//! - GRO never fails on a batch decap let through (the daemon treats a
//!   failed batch write as fatal), stays within the buffers' capacity,
//!   writes frames whose IPv4 headers verify, and the frames' segment counts
//!   add up to the packets of the run: each packet counted once.
//!
//! Input: a flags byte (bit 0: UDP GSO, bit 1: fix each packet's IPv4
//! header, bit 2: fix its TCP/UDP checksum), the device MTU (2 bytes), then
//! packets: `len_hi len_lo bytes...` when the top bit of `len_hi` is clear,
//! else one byte that repeats the previous packet as the next of its flow
//! (ID + 1, TCP sequence + its payload; bit 6: shorten the payload by bits
//! 0-5), so that flows to coalesce are one byte each.

#![no_main]

use std::cell::RefCell;
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use tun_rs::GROTable;
use tunl_encap::{
    HEADROOM, MIN_MTU, VIRTIO_NET_HDR_LEN, checksum, decapsulate, gso_segments,
    oversize_writes_as_is, tcp4_gso_header,
};
use tunl_fuzz::{AcceptAll, fix_ip_header, fix_l4_checksum, ihl, l4_checksum};
use tunl_io::{PacketBuf, RX_BUF_CAPACITY};

/// Packets per batch at most (the daemon's receive batch is 64).
const MAX_BATCH: usize = 64;

/// What `TunQueue` puts in the header slot of each buffer before GRO, to
/// find the buffers GRO merged into others afterwards.
const GRO_UNWRITTEN: u8 = 0xff;

thread_local! {
    /// Buffers of the daemon's receive capacity, allocated once (as the
    /// daemon does), and the GRO table.
    static STATE: RefCell<(Vec<PacketBuf>, GROTable)> = RefCell::new((
        (0..MAX_BATCH).map(|_| PacketBuf::with_capacity(RX_BUF_CAPACITY)).collect(),
        GROTable::new(),
    ));
}

/// The next packet of `prev`'s flow: IPv4 ID + 1, TCP sequence advanced by
/// `prev`'s payload, the payload shortened by `shorten` bytes.
fn next_of_flow(prev: &[u8], shorten: usize) -> Vec<u8> {
    let mut p = prev.to_vec();
    let Some(ihl) = ihl(&p).filter(|&l| l >= 20 && p.len() >= l) else {
        return p;
    };
    let id = u16::from_be_bytes([p[4], p[5]]).wrapping_add(1);
    p[4..6].copy_from_slice(&id.to_be_bytes());
    if p[9] == 6 && p.len() >= ihl + 20 {
        let doff = usize::from(p[ihl + 12] >> 4) * 4;
        let payload = p.len().saturating_sub(ihl + doff);
        let seq = u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]);
        let seq = seq.wrapping_add(payload as u32);
        p[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
        p.truncate(p.len() - shorten.min(payload.saturating_sub(1)));
    } else if p[9] == 17 && p.len() >= ihl + 8 {
        let payload = p.len() - ihl - 8;
        p.truncate(p.len() - shorten.min(payload.saturating_sub(1)));
        let udp_len = u16::try_from(p.len() - ihl).unwrap_or(0);
        p[ihl + 4..ihl + 6].copy_from_slice(&udp_len.to_be_bytes());
    }
    p
}

/// The inner packets the input describes.
fn packets(flags: u8, mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    while let Some((&op, rest)) = data.split_first() {
        if out.len() == MAX_BATCH {
            break;
        }
        let mut p = if op & 0x80 == 0 {
            let Some((&lo, rest)) = rest.split_first() else {
                break;
            };
            let len = usize::from(u16::from_be_bytes([op, lo]));
            let take = len.min(rest.len());
            data = &rest[take..];
            rest[..take].to_vec()
        } else {
            data = rest;
            let Some(prev) = out.last() else { continue };
            let shorten = if op & 0x40 != 0 {
                usize::from(op & 0x3f)
            } else {
                0
            };
            next_of_flow(prev, shorten)
        };
        if flags & 0x02 != 0 || op & 0x80 != 0 {
            fix_ip_header(&mut p);
        }
        if flags & 0x04 != 0 || op & 0x80 != 0 {
            fix_l4_checksum(&mut p);
        }
        out.push(p);
    }
    out
}

/// `tcp4_gso_header` on `pkt` and what it promises.
fn check_gso_header(pkt: &mut [u8], mtu: u16) -> Option<usize> {
    let before = pkt.to_vec();
    let mut hdr = [0xaa; VIRTIO_NET_HDR_LEN];
    let Some(n) = tcp4_gso_header(pkt, mtu, &mut hdr) else {
        assert_eq!(pkt, &before[..], "refused packet modified");
        assert_eq!(
            hdr, [0xaa; VIRTIO_NET_HDR_LEN],
            "refused packet's header written"
        );
        return None;
    };
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    assert_eq!(pkt[0] >> 4, 4);
    assert_eq!(pkt[9], 6, "TCP");
    assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
    assert!(checksum::verify_header(&pkt[..ihl]), "IPv4 checksum");
    let field = |i: usize| usize::from(u16::from_ne_bytes([hdr[i], hdr[i + 1]]));
    let (hdr_len, gso_size, csum_start, csum_offset) = (field(2), field(4), field(6), field(8));
    assert_eq!(csum_start, ihl);
    assert_eq!(csum_offset, 16);
    assert!(
        gso_size > 0 && hdr_len + gso_size <= usize::from(mtu),
        "segments fit the MTU"
    );
    assert!(hdr_len < pkt.len(), "payload after the headers");
    let frame: Vec<u8> = hdr.iter().chain(pkt.iter()).copied().collect();
    assert_eq!(gso_segments(&frame), n, "segment count");
    // What the kernel does with CHECKSUM_PARTIAL: sum from csum_start on,
    // store the complement. The result must be the real TCP checksum.
    let mut done = pkt.to_vec();
    let sum = !checksum::sum(&done[ihl..]);
    done[ihl + 16..ihl + 18].copy_from_slice(&sum.to_be_bytes());
    let (at, want) = l4_checksum(&done).expect("TCP");
    assert_eq!(
        u16::from_be_bytes([done[at], done[at + 1]]),
        want,
        "seeded TCP checksum"
    );
    // Only the length, the IPv4 checksum and the TCP checksum changed.
    let mut unchanged = pkt.to_vec();
    unchanged[2..4].copy_from_slice(&before[2..4]);
    unchanged[10..12].copy_from_slice(&before[10..12]);
    unchanged[ihl + 16..ihl + 18].copy_from_slice(&before[ihl + 16..ihl + 18]);
    assert_eq!(unchanged, before, "other bytes changed");
    Some(n)
}

/// One run of MTU-sized packets through tun-rs GRO, as `write_gro_run`
/// does; returns the segments its frames stand for.
fn gro_run(bufs: &mut [PacketBuf], gro: &mut GROTable, udp_gso: bool) -> usize {
    if bufs.is_empty() {
        return 0;
    }
    let hdr_at = HEADROOM - VIRTIO_NET_HDR_LEN;
    let lens: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
    for b in bufs.iter_mut() {
        b.as_mut()[hdr_at..HEADROOM].fill(GRO_UNWRITTEN);
    }
    if let Err(e) = gro.apply_gro(bufs, HEADROOM, udp_gso) {
        panic!("GRO refused a batch decap let through ({lens:?}): {e}");
    }
    let mut segments = 0;
    for b in bufs.iter() {
        let frame = &b.as_ref()[hdr_at..];
        if frame[0] == GRO_UNWRITTEN && frame[1] == GRO_UNWRITTEN {
            continue;
        }
        assert!(b.len() <= b.capacity());
        let pkt = &frame[VIRTIO_NET_HDR_LEN..];
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        assert!(
            checksum::verify_header(&pkt[..ihl]),
            "written IPv4 header checksum"
        );
        let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
        assert_eq!(total, pkt.len(), "written IPv4 total length");
        segments += gso_segments(frame);
    }
    segments
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, mtu_hi, mtu_lo], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let mtu = u16::from_be_bytes([mtu_hi, mtu_lo]).max(MIN_MTU);

    // The encap functions on the raw bytes.
    let _ = gso_segments(rest);
    let _ = oversize_writes_as_is(rest);
    check_gso_header(&mut rest.to_vec(), mtu);

    STATE.with_borrow_mut(|(bufs, gro)| {
        // Decap each packet behind an outer header, and place what it
        // accepts as the pipeline does: the inner packet at HEADROOM.
        let mut kept = 0;
        for p in packets(flags, rest) {
            let mut outer = vec![0u8; HEADROOM];
            outer.extend_from_slice(&p);
            let Ok(len) = u16::try_from(outer.len()) else {
                continue;
            };
            outer[0] = 0x45;
            outer[2..4].copy_from_slice(&len.to_be_bytes());
            outer[8] = 64;
            outer[9] = 4;
            outer[12..16].copy_from_slice(&Ipv4Addr::new(172, 16, 36, 5).octets());
            outer[16..20].copy_from_slice(&Ipv4Addr::new(172, 16, 35, 4).octets());
            tunl_fuzz::fix_ip_checksum(&mut outer);
            let Ok(d) = decapsulate(&mut outer, &AcceptAll) else {
                continue;
            };
            let inner = &outer[d.inner];
            let b = &mut bufs[kept];
            b.set_len(HEADROOM + inner.len());
            b.as_mut()[HEADROOM..].copy_from_slice(inner);
            kept += 1;
        }
        let bufs = &mut bufs[..kept];

        // send_batch with offload on: super-packets alone, GRO for the runs.
        let (mut counted, mut dropped) = (0, 0);
        let mut run = 0;
        for i in 0..bufs.len() {
            if bufs[i].len() - HEADROOM <= usize::from(mtu) {
                continue;
            }
            counted += gro_run(&mut bufs[run..i], gro, flags & 0x01 != 0);
            match check_gso_header(&mut bufs[i].as_mut()[HEADROOM..], mtu) {
                Some(n) => {
                    assert!(n >= 2, "a super-packet is more than one segment");
                    counted += 1;
                }
                // Written as it is, for the node to fragment.
                None if oversize_writes_as_is(&bufs[i].as_ref()[HEADROOM..]) => counted += 1,
                None => dropped += 1,
            }
            run = i + 1;
        }
        counted += gro_run(&mut bufs[run..], gro, flags & 0x01 != 0);
        // (A super-packet counts as one here, to compare with the packets.)
        assert_eq!(counted + dropped, kept, "every packet counted once");
    });
});
