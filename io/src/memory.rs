//! Handing freed heap memory back to the kernel.

/// Returns the free memory at the top of the heap and in the allocator's
/// free lists to the kernel (glibc's `malloc_trim(0)`), once the start-up
/// work (reading a large config, installing its routes) has freed what it
/// allocated: without it the daemon's RSS stays at the start-up peak.
/// Returns whether any memory was released. A no-op returning `false`
/// where the C library is not glibc.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no preconditions: it takes the
        // allocator's own locks and only releases memory no allocation
        // holds; it is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_freed_at_start_can_be_released() {
        // A large allocation freed again, then released: the call must not
        // disturb live allocations.
        let keep = vec![7u8; 1 << 16];
        drop(vec![1u8; 64 << 20]);
        let _ = super::release_free_memory();
        assert!(keep.iter().all(|&b| b == 7));
    }
}
