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
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn memory_freed_at_start_is_released() {
        // Many small blocks (below glibc's mmap threshold, so they live in
        // the heap, as a parsed config does) freed again: there is free
        // memory to release, and the call says it released some; live
        // allocations stay intact.
        let keep = vec![7u8; 1 << 16];
        let blocks: Vec<Vec<u8>> = (0..65_536).map(|i| vec![i as u8; 1024]).collect();
        drop(blocks);
        assert!(super::release_free_memory(), "nothing released");
        assert!(keep.iter().all(|&b| b == 7));
    }
}
