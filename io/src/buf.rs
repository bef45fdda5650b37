//! The reusable packet buffer.

use tun_rs::ExpandBuffer;

/// What the TUN reads and the encap pipeline need of a packet buffer: a
/// fixed capacity, a length, views of the valid bytes (`AsRef`/`AsMut`) and
/// of the whole capacity. [`PacketBuf`] is one on the heap; the AF_XDP
/// transmit frames ([`crate::xdp::UmemFrame`]) are chunks of a UMEM, so
/// pod packets are read straight into the memory the kernel sends from.
pub trait Buffer: AsRef<[u8]> + AsMut<[u8]> {
    /// The number of valid bytes.
    fn len(&self) -> usize;
    /// Whether the buffer holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sets the number of valid bytes, clamped to the capacity.
    fn set_len(&mut self, len: usize);
    /// The fixed capacity in bytes.
    fn capacity(&self) -> usize;
    /// The whole capacity, regardless of the length (for reading into).
    fn full_mut(&mut self) -> &mut [u8];
}

impl Buffer for PacketBuf {
    fn len(&self) -> usize {
        PacketBuf::len(self)
    }

    fn set_len(&mut self, len: usize) {
        PacketBuf::set_len(self, len);
    }

    fn capacity(&self) -> usize {
        PacketBuf::capacity(self)
    }

    fn full_mut(&mut self) -> &mut [u8] {
        PacketBuf::full_mut(self)
    }
}

/// A reusable packet buffer: fixed capacity, a length, never re-zeroed on
/// reuse.
///
/// The whole capacity is allocated (and zeroed) once, in
/// [`PacketBuf::with_capacity`]; afterwards only the length changes. `AsRef`
/// and `AsMut` view the first [`len`](PacketBuf::len) bytes;
/// [`full_mut`](PacketBuf::full_mut) views the whole capacity, for reading
/// into. It implements [`tun_rs::ExpandBuffer`] so GRO can coalesce packets
/// into it, but it never grows: tun-rs checks the capacity before coalescing
/// and leaves packets apart when it is too small.
#[derive(Clone)]
pub struct PacketBuf {
    data: Box<[u8]>,
    len: usize,
}

impl PacketBuf {
    /// Allocates a zeroed buffer of `cap` bytes, with length 0.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            data: vec![0; cap].into_boxed_slice(),
            len: 0,
        }
    }

    /// The number of valid bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the number of valid bytes. A length beyond the capacity is
    /// clamped to the capacity (never a panic); the bytes up to the new
    /// length are whatever the buffer held before (never re-zeroed).
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.data.len());
    }

    /// The fixed capacity in bytes.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// The whole capacity, regardless of the length (for reading into).
    #[inline]
    pub fn full_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The whole capacity, regardless of the length.
    #[inline]
    pub fn full(&self) -> &[u8] {
        &self.data
    }
}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBuf")
            .field("len", &self.len)
            .field("capacity", &self.data.len())
            .finish()
    }
}

impl AsRef<[u8]> for PacketBuf {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl AsMut<[u8]> for PacketBuf {
    #[inline]
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

impl ExpandBuffer for PacketBuf {
    fn buf_capacity(&self) -> usize {
        self.data.len()
    }

    /// Resizes within the capacity (clamped), filling new bytes with `value`.
    fn buf_resize(&mut self, new_len: usize, value: u8) {
        let new_len = new_len.min(self.data.len());
        if new_len > self.len {
            self.data[self.len..new_len].fill(value);
        }
        self.len = new_len;
    }

    /// Appends as much of `src` as fits in the capacity.
    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        let n = src.len().min(self.data.len() - self.len);
        self.data[self.len..self.len + n].copy_from_slice(&src[..n]);
        self.len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_len_clamps_and_views_follow_len() {
        let mut b = PacketBuf::with_capacity(8);
        assert!(b.is_empty());
        b.full_mut()[..3].copy_from_slice(&[1, 2, 3]);
        b.set_len(3);
        assert_eq!(b.as_ref(), &[1, 2, 3]);
        b.set_len(100);
        assert_eq!(b.len(), 8);
        b.set_len(1);
        assert_eq!(b.as_mut(), &mut [1]);
        // Not re-zeroed on reuse.
        b.set_len(3);
        assert_eq!(b.as_ref(), &[1, 2, 3]);
    }

    #[test]
    fn expand_buffer_stays_within_capacity() {
        let mut b = PacketBuf::with_capacity(6);
        b.buf_resize(2, 9);
        assert_eq!(b.as_ref(), &[9, 9]);
        b.buf_extend_from_slice(&[1, 2, 3]);
        assert_eq!(b.as_ref(), &[9, 9, 1, 2, 3]);
        b.buf_extend_from_slice(&[4, 5, 6]);
        assert_eq!(b.as_ref(), &[9, 9, 1, 2, 3, 4]);
        assert_eq!(b.buf_capacity(), 6);
        b.buf_resize(1, 0);
        assert_eq!(b.as_ref(), &[9]);
    }
}
