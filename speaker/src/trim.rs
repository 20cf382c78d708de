//! Gives the heap's free pages back to the node (glibc's `malloc_trim`): after the initial
//! lists, and now and then after re-lists, a speaker holds far less than it once needed,
//! and every node runs one (docs/architecture.md#memory).
//!
//! The workspace's only `unsafe`: a foreign call that takes no pointer and that glibc
//! documents as callable at any time from any thread (it takes the allocator's own locks).

/// Returns free heap memory to the kernel; true when some was released. A no-op (false)
/// where the C library is not glibc.
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim(pad) reads no pointer from us and synchronises with every
        // other allocation through glibc's arena locks; any pad value is valid.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// Callable at any time, with other threads allocating meanwhile.
    #[test]
    fn trimming_while_other_threads_allocate_is_harmless() {
        let workers: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for n in 0..2_000 {
                        kept.push(vec![i as u8; 64 + n % 4096]);
                        if n % 3 == 0 {
                            kept.swap_remove(0);
                        }
                    }
                    kept.len()
                })
            })
            .collect();
        for _ in 0..50 {
            super::release_free_memory();
        }
        for w in workers {
            assert!(w.join().unwrap() > 0);
        }
    }
}
