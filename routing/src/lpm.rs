//! A single-threaded IPv4 longest-prefix-match table tuned for pod blocks.
//!
//! # Layout
//! One open-addressing hash table per prefix length (0..=32), keyed by the
//! network address, plus a bitmask of the lengths that hold any route.
//!
//! Pod routes are blocks of one size (the *block length*, /26 by default), so
//! the table for that length holds nearly every route. A lookup probes it
//! first: one multiply, one 8-byte slot (key + next hop) for the common hit.
//! Each block slot carries a flag (bit 0 of the key, always zero in a /30 or
//! shorter network) that says "some longer prefix lies inside this block";
//! only then are the longer lengths probed. The block length adapts: when
//! another length comes to dominate, the fast path moves to it (one O(n)
//! rebuild of the flags). An address outside every block
//! probes the other present lengths from longest to shortest; the first hit
//! is the longest match. So the general case (any lengths, overlaps) stays
//! exact, and its cost grows with the number of *distinct* lengths present,
//! not with the number of routes.
//!
//! The tables use linear probing at a load factor of at most 1/2 and
//! backward-shift deletion (no tombstones), so lookups never degrade after
//! churn. Every operation is deterministic (no random hash state), which the
//! two-copy table of [`RouteWriter`](crate::RouteWriter) relies on.

use std::collections::BTreeMap;
use std::mem::size_of;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// The block length a table built by [`Lpm::new`] is tuned for: Calico's default.
pub const DEFAULT_BLOCK_LEN: u8 = 26;

/// The longest block length that gets the fast path (its networks leave bit 0
/// free for the more-specific flag and never collide with the empty marker).
const MAX_BLOCK_LEN: u8 = 30;

/// Marks an empty slot. No network of length 31 or less equals it, and a /32
/// of 255.255.255.255 is kept outside the slots (`LenTable::all_ones`).
const EMPTY: u32 = u32::MAX;

/// Flag bit in a block slot's key: a longer prefix lies inside this block.
const NESTED: u32 = 1;

/// The fast path moves to a length once it holds more than twice the routes
/// of the current one plus this many.
const ADAPT_SLACK: usize = 16;

/// Fibonacci hashing multiplier (2^64 / golden ratio, odd).
const HASH_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// Smallest slot count once a table holds anything.
const MIN_CAPACITY: usize = 4;

/// Netmask of a prefix length, as a host-order `u32`.
#[inline]
fn netmask(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

/// Network address and length of `prefix`, host bits cleared.
#[inline]
fn normalise(prefix: Ipv4Network) -> (u32, u8) {
    let len = prefix.prefix().min(32);
    (u32::from(prefix.ip()) & netmask(len), len)
}

#[derive(Clone, Copy, Debug)]
struct Slot<V> {
    /// Network address (`| NESTED` in block slots), or `EMPTY`.
    key: u32,
    value: V,
}

/// The routes of one prefix length.
#[derive(Clone, Debug)]
struct LenTable<V> {
    /// Power-of-two count of slots, or empty.
    slots: Vec<Slot<V>>,
    /// `64 - log2(slots.len())`: the hash keeps the top bits of the product.
    shift: u32,
    /// Mask applied to a slot key before comparing it with a network.
    cmp_mask: u32,
    /// Routes held in `slots`.
    count: usize,
    /// The route for 255.255.255.255/32, whose key would equal `EMPTY`.
    all_ones: Option<V>,
}

impl<V: Copy> LenTable<V> {
    fn new(len: u8) -> Self {
        Self {
            slots: Vec::new(),
            shift: 64,
            cmp_mask: if len <= MAX_BLOCK_LEN { !NESTED } else { !0 },
            count: 0,
            all_ones: None,
        }
    }

    fn len(&self) -> usize {
        self.count + usize::from(self.all_ones.is_some())
    }

    #[inline]
    fn home(&self, net: u32) -> usize {
        (u64::from(net).wrapping_mul(HASH_MUL) >> self.shift) as usize
    }

    /// Index of the slot holding `net`, if any.
    #[inline]
    fn position(&self, net: u32) -> Option<usize> {
        if self.count == 0 {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(net);
        loop {
            let slot = self.slots.get(i)?;
            if slot.key & self.cmp_mask == net {
                return Some(i);
            }
            if slot.key == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// The value of `net` and whether its slot is flagged as nesting longer prefixes.
    #[inline]
    fn find(&self, net: u32) -> Option<(V, bool)> {
        if net == EMPTY {
            return self.all_ones.map(|v| (v, false));
        }
        let slot = self.slots.get(self.position(net)?)?;
        Some((
            slot.value,
            slot.key & NESTED != 0 && self.cmp_mask == !NESTED,
        ))
    }

    fn insert(&mut self, net: u32, value: V, nested: bool) -> Option<V> {
        if net == EMPTY {
            return self.all_ones.replace(value);
        }
        if let Some(i) = self.position(net) {
            let slot = &mut self.slots[i];
            return Some(std::mem::replace(&mut slot.value, value));
        }
        if (self.count + 1) * 2 > self.slots.len() {
            self.resize(((self.count + 1) * 2).next_power_of_two(), value);
        }
        let key = if nested && self.cmp_mask == !NESTED {
            net | NESTED
        } else {
            net
        };
        self.place(Slot { key, value });
        self.count += 1;
        None
    }

    /// Puts a slot whose key is absent into the first free slot of its probe run.
    fn place(&mut self, slot: Slot<V>) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(slot.key & self.cmp_mask);
        while self.slots[i].key != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
    }

    fn resize(&mut self, capacity: usize, filler: V) {
        let capacity = capacity.max(MIN_CAPACITY);
        let old = std::mem::replace(
            &mut self.slots,
            vec![
                Slot {
                    key: EMPTY,
                    value: filler,
                };
                capacity
            ],
        );
        self.shift = 64 - capacity.trailing_zeros();
        for slot in old.into_iter().filter(|s| s.key != EMPTY) {
            self.place(slot);
        }
    }

    fn remove(&mut self, net: u32) -> Option<V> {
        if net == EMPTY {
            return self.all_ones.take();
        }
        let mut hole = self.position(net)?;
        let removed = self.slots[hole].value;
        let mask = self.slots.len() - 1;
        let mut j = hole;
        // Backward-shift deletion: pull later members of the probe run into the hole
        // when the hole lies between their home slot and where they sit.
        loop {
            j = (j + 1) & mask;
            let key = self.slots[j].key;
            if key == EMPTY {
                break;
            }
            let home = self.home(key & self.cmp_mask);
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole].key = EMPTY;
        self.count -= 1;
        if self.count == 0 {
            self.slots = Vec::new();
            self.shift = 64;
        } else if self.count * 8 < self.slots.len() && self.slots.len() > MIN_CAPACITY {
            self.resize((self.count * 2).next_power_of_two(), removed);
        }
        Some(removed)
    }

    /// Sets or clears the more-specific flag of `net`'s slot, if present.
    fn set_nested(&mut self, net: u32, nested: bool) {
        if self.cmp_mask != !NESTED {
            return;
        }
        if let Some(i) = self.position(net) {
            let slot = &mut self.slots[i];
            slot.key = if nested { net | NESTED } else { net };
        }
    }

    fn entries(&self) -> impl Iterator<Item = (u32, V)> + '_ {
        let mask = self.cmp_mask;
        self.slots
            .iter()
            .filter(|s| s.key != EMPTY)
            .map(move |s| (s.key & mask, s.value))
            .chain(self.all_ones.map(|v| (EMPTY, v)))
    }

    fn memory_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot<V>>()
    }
}

/// An IPv4 longest-prefix-match table mapping prefixes to small `Copy` values
/// (tunl maps a block to its next hop's underlay address).
///
/// Single-threaded; share it between threads through a
/// [`RouteWriter`](crate::RouteWriter) and its readers. See the module doc
/// for the layout.
#[derive(Clone, Debug)]
pub struct Lpm<V> {
    tables: [LenTable<V>; 33],
    /// Bit `l` is set when `tables[l]` holds a route.
    present: u64,
    /// The length probed first; always `<= MAX_BLOCK_LEN`.
    block_len: u8,
    /// Block network -> number of routes longer than `block_len` inside it.
    nested: BTreeMap<u32, u32>,
    len: usize,
}

impl<V: Copy + PartialEq> Default for Lpm<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy + PartialEq> Lpm<V> {
    /// An empty table tuned for /26 blocks ([`DEFAULT_BLOCK_LEN`]).
    pub fn new() -> Self {
        Self::with_block_len(DEFAULT_BLOCK_LEN)
    }

    /// An empty table whose fast path starts at prefixes of length `block_len`
    /// (the IPAM block size; lengths above 30 are treated as 30). The fast
    /// path moves to whichever length of 30 or less comes to hold more than
    /// twice as many routes (plus 16) as the current one. Any length is still
    /// stored and matched exactly; only speed depends on this.
    pub fn with_block_len(block_len: u8) -> Self {
        Self {
            tables: std::array::from_fn(|l| LenTable::new(l as u8)),
            present: 0,
            block_len: block_len.min(MAX_BLOCK_LEN),
            nested: BTreeMap::new(),
            len: 0,
        }
    }

    /// The prefix length this table's fast path is tuned for.
    pub fn block_len(&self) -> u8 {
        self.block_len
    }

    /// Adds or replaces the route for `prefix`. Host bits of `prefix` are
    /// ignored (the prefix is normalised to its network). Returns the previous value.
    pub fn insert(&mut self, prefix: Ipv4Network, value: V) -> Option<V> {
        let (net, len) = normalise(prefix);
        let block = self.block_len;
        let nested = len == block && self.nested.contains_key(&net);
        let prev = self.tables[usize::from(len)].insert(net, value, nested);
        if prev.is_none() {
            self.len += 1;
            self.present |= 1 << len;
            if len > block {
                let block_net = net & netmask(block);
                let count = self.nested.entry(block_net).or_insert(0);
                *count += 1;
                if *count == 1 {
                    self.tables[usize::from(block)].set_nested(block_net, true);
                }
            }
            if len != block
                && len <= MAX_BLOCK_LEN
                && self.tables[usize::from(len)].len()
                    > 2 * self.tables[usize::from(block)].len() + ADAPT_SLACK
            {
                self.set_block_len(len);
            }
        }
        prev
    }

    /// Makes `block_len` the fast-path length and rebuilds the nested flags (O(routes)).
    fn set_block_len(&mut self, block_len: u8) {
        let old = usize::from(self.block_len);
        for slot in &mut self.tables[old].slots {
            if slot.key != EMPTY {
                slot.key &= !NESTED;
            }
        }
        self.block_len = block_len;
        self.nested.clear();
        let mask = netmask(block_len);
        for table in &self.tables[usize::from(block_len) + 1..] {
            for (net, _) in table.entries() {
                *self.nested.entry(net & mask).or_insert(0) += 1;
            }
        }
        let table = &mut self.tables[usize::from(block_len)];
        for &net in self.nested.keys() {
            table.set_nested(net, true);
        }
    }

    /// Removes the route for exactly `prefix` (normalised). Returns its value.
    pub fn remove(&mut self, prefix: Ipv4Network) -> Option<V> {
        let (net, len) = normalise(prefix);
        let table = &mut self.tables[usize::from(len)];
        let removed = table.remove(net)?;
        if table.len() == 0 {
            self.present &= !(1 << len);
        }
        self.len -= 1;
        let block = self.block_len;
        if len > block {
            let block_net = net & netmask(block);
            if let Some(count) = self.nested.get_mut(&block_net) {
                *count -= 1;
                if *count == 0 {
                    self.nested.remove(&block_net);
                    self.tables[usize::from(block)].set_nested(block_net, false);
                }
            }
        }
        Some(removed)
    }

    /// The value stored for exactly `prefix` (normalised), if any.
    pub fn get(&self, prefix: Ipv4Network) -> Option<V> {
        let (net, len) = normalise(prefix);
        self.tables[usize::from(len)].find(net).map(|(v, _)| v)
    }

    /// The value of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<V> {
        self.lookup_u32(u32::from(addr))
    }

    /// The value of the longest prefix containing `addr` (host-order `u32`).
    #[inline]
    pub fn lookup_u32(&self, addr: u32) -> Option<V> {
        let block = self.block_len;
        match self.tables[usize::from(block)].find(addr & netmask(block)) {
            Some((value, false)) => Some(value),
            Some((value, true)) => self
                .scan(addr, self.present & !(u64::MAX >> (63 - block)))
                .or(Some(value)),
            None => self.scan(addr, self.present & !(1 << block)),
        }
    }

    /// Probes the lengths in `lens` from longest to shortest; the first hit wins.
    #[inline(never)]
    fn scan(&self, addr: u32, mut lens: u64) -> Option<V> {
        while lens != 0 {
            let len = 63 - lens.leading_zeros() as u8;
            if let Some((value, _)) = self.tables[usize::from(len)].find(addr & netmask(len)) {
                return Some(value);
            }
            lens &= !(1 << len);
        }
        None
    }

    /// Looks up every address of `addrs` into `out`, filling
    /// `out[..min(addrs.len(), out.len())]`; equal to calling [`Lpm::lookup`] on each.
    pub fn lookup_batch(&self, addrs: &[Ipv4Addr], out: &mut [Option<V>]) {
        for (addr, out) in addrs.iter().zip(out.iter_mut()) {
            *out = self.lookup_u32(u32::from(*addr));
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no route.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All routes, sorted by (network, prefix length).
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Network, V)> + '_ {
        let mut routes: Vec<(u32, u8, V)> = Vec::with_capacity(self.len);
        for (len, table) in self.tables.iter().enumerate() {
            routes.extend(table.entries().map(|(net, v)| (net, len as u8, v)));
        }
        routes.sort_unstable_by_key(|&(net, len, _)| (net, len));
        routes.into_iter().filter_map(|(net, len, v)| {
            Ipv4Network::new_checked(Ipv4Addr::from(net), len).map(|p| (p, v))
        })
    }

    /// Heap bytes held by the table (slots and the nested-block index; the
    /// latter estimated at 2x its entries). Divide by [`Lpm::len`] for bytes/route.
    pub fn memory_bytes(&self) -> usize {
        self.tables
            .iter()
            .map(LenTable::memory_bytes)
            .sum::<usize>()
            + self.nested.len() * 2 * size_of::<(u32, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use ipnetwork::Ipv4Network;
    use proptest::prelude::*;

    use super::*;

    /// The reference: every route in a map, longest match by linear scan.
    #[derive(Default)]
    struct Naive(BTreeMap<(u32, u8), u32>);

    impl Naive {
        fn key(prefix: Ipv4Network) -> (u32, u8) {
            let len = prefix.prefix();
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (u32::from(prefix.ip()) & mask, len)
        }

        fn lookup(&self, addr: u32) -> Option<u32> {
            self.0
                .iter()
                .filter(|&(&(net, len), _)| {
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                    addr & mask == net
                })
                .max_by_key(|&(&(_, len), _)| len)
                .map(|(_, &v)| v)
        }
    }

    fn net(addr: u32, len: u8) -> Ipv4Network {
        Ipv4Network::new(Ipv4Addr::from(addr), len).expect("len <= 32")
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u32, u8, u32),
        Remove(u32, u8),
        /// Remove the n-th route currently present (so removals hit).
        RemoveExisting(usize),
    }

    /// Addresses clustered so prefixes overlap: a few /8s, /16s and edges.
    fn addr() -> impl Strategy<Value = u32> {
        prop_oneof![
            any::<u32>(),
            (0u32..4, any::<u32>()).prop_map(|(hi, lo)| (10 << 24) | (hi << 16) | (lo & 0xffff)),
            (0u32..64).prop_map(|i| (10 << 24) | (i << 6)),
            Just(0),
            Just(u32::MAX),
            Just(u32::MAX - 1),
        ]
    }

    fn len() -> impl Strategy<Value = u8> {
        prop_oneof![0u8..=32, Just(26), Just(26), Just(27), Just(32)]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (addr(), len(), 0u32..4).prop_map(|(a, l, v)| Op::Insert(a, l, v)),
            1 => (addr(), len()).prop_map(|(a, l)| Op::Remove(a, l)),
            2 => any::<usize>().prop_map(Op::RemoveExisting),
        ]
    }

    /// Addresses worth looking up for `routes`: network, broadcast, and their neighbours.
    fn probes(naive: &Naive, extra: &[u32]) -> Vec<u32> {
        let mut out = extra.to_vec();
        for &(net, len) in naive.0.keys() {
            let size = if len == 0 {
                u32::MAX
            } else {
                (1u32 << (32 - len)) - 1
            };
            let last = net | size;
            out.extend([
                net,
                last,
                net.wrapping_sub(1),
                last.wrapping_add(1),
                net | (size / 2),
            ]);
        }
        out
    }

    fn check(lpm: &Lpm<u32>, naive: &Naive, extra: &[u32]) -> Result<(), TestCaseError> {
        prop_assert_eq!(lpm.len(), naive.0.len());
        prop_assert_eq!(lpm.is_empty(), naive.0.is_empty());
        let listed: Vec<_> = lpm.iter().collect();
        let expected: Vec<_> = naive.0.iter().map(|(&(a, l), &v)| (net(a, l), v)).collect();
        prop_assert_eq!(listed, expected);
        for (&(a, l), &v) in &naive.0 {
            prop_assert_eq!(lpm.get(net(a, l)), Some(v));
        }
        let addrs = probes(naive, extra);
        for &a in &addrs {
            prop_assert_eq!(
                lpm.lookup_u32(a),
                naive.lookup(a),
                "addr {}",
                Ipv4Addr::from(a)
            );
        }
        let addrs: Vec<Ipv4Addr> = addrs.into_iter().map(Ipv4Addr::from).collect();
        let mut out = vec![Some(u32::MAX); addrs.len() + 3];
        lpm.lookup_batch(&addrs, &mut out);
        for (a, o) in addrs.iter().zip(&out) {
            prop_assert_eq!(*o, lpm.lookup(*a));
        }
        prop_assert!(out[addrs.len()..].iter().all(|o| *o == Some(u32::MAX)));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_linear_scan(
            block_len in prop_oneof![Just(26u8), 0u8..=32],
            ops in prop::collection::vec(op(), 0..200),
            extra in prop::collection::vec(addr(), 0..64),
        ) {
            let mut lpm = Lpm::with_block_len(block_len);
            let mut naive = Naive::default();
            for (i, op) in ops.iter().enumerate() {
                match *op {
                    Op::Insert(a, l, v) => {
                        let p = net(a, l);
                        prop_assert_eq!(lpm.insert(p, v), naive.0.insert(Naive::key(p), v));
                    }
                    Op::Remove(a, l) => {
                        let p = net(a, l);
                        prop_assert_eq!(lpm.remove(p), naive.0.remove(&Naive::key(p)));
                    }
                    Op::RemoveExisting(n) => {
                        if let Some(&(a, l)) = naive.0.keys().nth(n % naive.0.len().max(1)) {
                            let v = naive.0.remove(&(a, l));
                            prop_assert_eq!(lpm.remove(net(a, l)), v);
                        }
                    }
                }
                if i % 16 == 0 {
                    check(&lpm, &naive, &extra)?;
                }
            }
            check(&lpm, &naive, &extra)?;
            // Drain it completely: everything must go, and lookups must miss.
            for (a, l) in naive.0.keys().copied().collect::<Vec<_>>() {
                prop_assert!(lpm.remove(net(a, l)).is_some());
                naive.0.remove(&(a, l));
            }
            check(&lpm, &naive, &extra)?;
        }

        #[test]
        fn host_bits_are_ignored(a in any::<u32>(), l in 0u8..=32, v in any::<u32>()) {
            let mut lpm = Lpm::new();
            let p = net(a, l);
            let normal = net(Naive::key(p).0, l);
            prop_assert_eq!(lpm.insert(p, v), None);
            prop_assert_eq!(lpm.get(normal), Some(v));
            prop_assert_eq!(lpm.iter().next(), Some((normal, v)));
            prop_assert_eq!(lpm.lookup_u32(a), Some(v));
            prop_assert_eq!(lpm.remove(normal), Some(v));
            prop_assert!(lpm.is_empty());
        }
    }

    #[test]
    fn many_blocks_grow_and_shrink() {
        let mut lpm = Lpm::new();
        let mut naive = Naive::default();
        // 5000 /26 blocks, some with nested /32s, a covering /16 and a default route.
        for i in 0..5000u32 {
            let a = (10 << 24) | (i.wrapping_mul(2_654_435_761) & 0x00ff_ffc0);
            lpm.insert(net(a, 26), i);
            naive.0.insert((a, 26), i);
            if i % 97 == 0 {
                lpm.insert(net(a | 7, 32), i + 1);
                naive.0.insert((a | 7, 32), i + 1);
            }
        }
        lpm.insert(net(10 << 24, 16), 1);
        naive.0.insert((10 << 24, 16), 1);
        lpm.insert(net(0, 0), 2);
        naive.0.insert((0, 0), 2);
        check(&lpm, &naive, &[]).expect("after growth");
        let mem = lpm.memory_bytes() / lpm.len();
        assert!(mem <= 64, "{mem} bytes/route");
        let keys: Vec<_> = naive.0.keys().copied().collect();
        for &(a, l) in keys.iter().step_by(3).chain(keys.iter().skip(1).step_by(3)) {
            assert_eq!(lpm.remove(net(a, l)), naive.0.remove(&(a, l)));
        }
        check(&lpm, &naive, &[]).expect("after shrink");
    }

    #[test]
    fn block_len_follows_the_dominant_length() {
        let mut lpm = Lpm::new();
        let mut naive = Naive::default();
        // Nested routes first, so the switch must rebuild their flags.
        for i in 0..40u32 {
            let a = (10 << 24) | (i << 8);
            lpm.insert(net(a | 0x40, 26), 1000 + i);
            naive.0.insert((a | 0x40, 26), 1000 + i);
            lpm.insert(net(a | 0x85, 32), 2000 + i);
            naive.0.insert((a | 0x85, 32), 2000 + i);
        }
        assert_eq!(lpm.block_len(), 26);
        for i in 0..200u32 {
            let a = (10 << 24) | (i << 8);
            lpm.insert(net(a, 24), i);
            naive.0.insert((a, 24), i);
        }
        assert_eq!(lpm.block_len(), 24);
        check(&lpm, &naive, &[]).expect("after the switch");
        for i in (0..40u32).step_by(2) {
            let a = (10 << 24) | (i << 8) | 0x85;
            assert_eq!(lpm.remove(net(a, 32)), naive.0.remove(&(a, 32)));
        }
        check(&lpm, &naive, &[]).expect("after removing nested routes");
    }

    #[test]
    fn all_ones_host_route() {
        let mut lpm = Lpm::new();
        assert_eq!(lpm.lookup(Ipv4Addr::BROADCAST), None);
        lpm.insert(net(u32::MAX, 32), 5);
        lpm.insert(net(u32::MAX - 1, 31), 6);
        assert_eq!(lpm.lookup(Ipv4Addr::BROADCAST), Some(5));
        assert_eq!(lpm.lookup_u32(u32::MAX - 1), Some(6));
        assert_eq!(lpm.len(), 2);
        assert_eq!(lpm.remove(net(u32::MAX, 32)), Some(5));
        assert_eq!(lpm.lookup(Ipv4Addr::BROADCAST), Some(6));
    }
}
