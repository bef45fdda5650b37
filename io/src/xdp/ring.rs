//! The four AF_XDP rings (fill, completion, RX, TX) and the memory
//! mappings behind them and the UMEM.
//!
//! Each ring is a power-of-two array with a free-running `u32` producer and
//! consumer index, shared with the kernel (`net/xdp/xsk_queue.h`):
//!
//! ```text
//! producer: if (LOAD ->consumer) { STORE $data; STORE.rel ->producer }
//! consumer: LOAD.acq ->producer; LOAD $data; STORE.rel ->consumer
//! ```
//!
//! So the producer loads `consumer` with Acquire before reusing slots, writes
//! them, then stores `producer` with Release; the consumer loads `producer`
//! with Acquire, reads the slots, then stores `consumer` with Release. User
//! space produces on the fill and TX rings and consumes the RX and
//! completion rings. The cached indices wrap (`wrapping_*`); a producer's
//! cached consumer index is kept `size` ahead, so `cached_cons -
//! cached_prod` is the free room.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

/// A memory mapping, unmapped on drop.
#[derive(Debug)]
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is an address range and its length; it holds no
// thread-affine state, and every access to the memory goes through the
// owners' own synchronisation (exclusive borrows, or the rings' atomics).
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only hand out the base address.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Anonymous, private, populated memory of `len` bytes (the UMEM).
    pub(super) fn anonymous(len: usize) -> io::Result<Mapping> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    }

    /// The ring of `fd` at page offset `pgoff`, `len` bytes.
    fn ring(fd: BorrowedFd<'_>, len: usize, pgoff: u64) -> io::Result<Mapping> {
        let offset = libc::off_t::try_from(pgoff)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ring offset"))?;
        Self::map(
            len,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            offset,
        )
    }

    fn map(
        len: usize,
        flags: libc::c_int,
        fd: libc::c_int,
        offset: libc::off_t,
    ) -> io::Result<Self> {
        // SAFETY: a new mapping at an address the kernel chooses: no
        // existing memory is touched; the result is checked below.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        Ok(Mapping { ptr, len })
    }

    /// The first byte.
    pub(super) fn base(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The length in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr and len are what mmap returned; whoever borrowed the
        // memory borrowed it from the owner of this Mapping, which is being
        // dropped, so nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One mmapped ring of `T` entries (`u64` UMEM addresses for fill and
/// completion, `xdp_desc` for RX and TX).
#[derive(Debug)]
pub(super) struct Ring<T> {
    /// Keeps the ring mapped while the pointers below are used.
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: the pointers point into `map`, owned by the ring; the ring is used
// through `&mut self` only (one thread at a time), and the kernel side is
// synchronised by the atomics.
unsafe impl<T: Send> Send for Ring<T> {}

/// Which side of a ring user space is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// User space writes entries (fill, TX).
    Producer,
    /// User space reads entries (RX, completion).
    Consumer,
}

impl<T: Copy> Ring<T> {
    /// Maps the ring of `size` entries (a power of two) whose offsets the
    /// kernel gave in `off`, at page offset `pgoff` of the socket `fd`.
    pub(super) fn map(
        fd: BorrowedFd<'_>,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
        side: Side,
    ) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring size must be a power of two",
            ));
        }
        let to_usize = |v: u64| {
            usize::try_from(v).map_err(|_| io::Error::other("ring offset beyond the address space"))
        };
        let desc = to_usize(off.desc)?;
        let len = desc + size as usize * size_of::<T>();
        for field in [off.producer, off.consumer, off.flags] {
            let at = to_usize(field)?;
            if at % align_of::<AtomicU32>() != 0 || at + size_of::<AtomicU32>() > len {
                return Err(io::Error::other("the kernel's ring offsets do not fit"));
            }
        }
        if desc % align_of::<T>() != 0 {
            return Err(io::Error::other("the kernel's ring offsets are misaligned"));
        }
        let map = Mapping::ring(fd, len, pgoff)?;
        let base = map.base();
        let at = |offset: usize| {
            // SAFETY: every offset was checked above to lie inside the
            // mapping of `len` bytes, so the result stays in it.
            unsafe { base.add(offset) }
        };
        let producer = at(to_usize(off.producer)?).cast::<AtomicU32>();
        let consumer = at(to_usize(off.consumer)?).cast::<AtomicU32>();
        let flags = at(to_usize(off.flags)?).cast::<AtomicU32>();
        let descs = at(desc).cast::<T>();
        // SAFETY: producer and consumer are aligned u32 slots in the live
        // mapping (checked above), which the kernel only accesses atomically.
        let (p, c) = unsafe {
            (
                producer.as_ref().load(Ordering::Relaxed),
                consumer.as_ref().load(Ordering::Relaxed),
            )
        };
        Ok(Ring {
            _map: map,
            producer,
            consumer,
            flags,
            descs,
            mask: size - 1,
            size,
            cached_prod: p,
            cached_cons: match side {
                Side::Producer => c.wrapping_add(size),
                Side::Consumer => c,
            },
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: an aligned u32 in the mapping, which lives as long as self.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for producer.
        unsafe { self.consumer.as_ref() }
    }

    /// Whether the kernel asks for a wakeup (`XDP_RING_NEED_WAKEUP`): a
    /// `sendto` for TX, a `recvfrom` or `poll` for fill.
    pub(super) fn needs_wakeup(&self) -> bool {
        // SAFETY: as for producer.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Producer: the free slots, up to `want`.
    pub(super) fn free(&mut self, want: u32) -> u32 {
        let mut free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free < want {
            // Acquire: the kernel's reads of the slots it released happened
            // before we overwrite them.
            let c = self.consumer().load(Ordering::Acquire);
            self.cached_cons = c.wrapping_add(self.size);
            free = self.cached_cons.wrapping_sub(self.cached_prod);
        }
        free.min(want)
    }

    /// Producer: writes entry `i` past the producer index; `i` must be below
    /// what [`Ring::free`] granted (checked in debug builds; a slot beyond it
    /// would overwrite an entry the kernel has not consumed yet, never
    /// memory outside the ring).
    pub(super) fn write(&mut self, i: u32, v: T) {
        debug_assert!(i < self.cached_cons.wrapping_sub(self.cached_prod));
        let slot = (self.cached_prod.wrapping_add(i) & self.mask) as usize;
        // SAFETY: slot <= mask < size, so the entry lies inside the mapping;
        // the kernel does not read it before the producer index covers it.
        unsafe { ptr::write_volatile(self.descs.as_ptr().add(slot), v) };
    }

    /// Producer: publishes `n` written entries.
    pub(super) fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        // Release: the entries are visible before the index that covers them.
        self.producer().store(self.cached_prod, Ordering::Release);
    }

    /// Consumer: the entries ready, up to `want`.
    pub(super) fn ready(&mut self, want: u32) -> u32 {
        let mut avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail < want {
            // Acquire: pairs with the kernel's release of the index.
            self.cached_prod = self.producer().load(Ordering::Acquire);
            avail = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        avail.min(want)
    }

    /// Consumer: reads entry `i` past the consumer index (`i` below what
    /// [`Ring::ready`] gave; beyond it the value is stale, never out of the
    /// ring).
    pub(super) fn read(&self, i: u32) -> T {
        let slot = (self.cached_cons.wrapping_add(i) & self.mask) as usize;
        // SAFETY: slot < size: inside the mapping; the kernel published the
        // entry before the producer index we loaded with Acquire.
        unsafe { ptr::read_volatile(self.descs.as_ptr().add(slot)) }
    }

    /// Consumer: gives `n` read entries back to the kernel.
    pub(super) fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        // Release: our reads of the entries happen before the kernel reuses
        // the slots.
        self.consumer().store(self.cached_cons, Ordering::Release);
    }
}
