// Copyright 2019 Octavian Oncescu

#![no_std]

//! A drop-in global allocator wrapper around the [mimalloc](https://github.com/microsoft/mimalloc) allocator.
//! Mimalloc is a general purpose, performance oriented allocator built by Microsoft.
//!
//! ## Usage
//! ```rust,ignore
//! use mimalloc::MiMalloc;
//!
//! #[global_allocator]
//! static GLOBAL: MiMalloc = MiMalloc;
//! ```
//!
//! ## Usage with secure mode
//! Using secure mode adds guard pages,
//! randomized allocation, encrypted free lists, etc. The performance penalty is usually
//! around 10% according to [mimalloc's](https://github.com/microsoft/mimalloc)
//! own benchmarks.
//!
//! To enable secure mode, put in `Cargo.toml`:
//! ```toml
//! [dependencies]
//! mimalloc = { version = "*", features = ["secure"] }
//! ```

extern crate libmimalloc_sys as ffi;

#[cfg(feature = "extended")]
mod extended;

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use ffi::*;

/// Drop-in mimalloc global allocator.
///
/// ## Usage
/// ```rust,ignore
/// use mimalloc::MiMalloc;
///
/// #[global_allocator]
/// static GLOBAL: MiMalloc = MiMalloc;
/// ```
pub struct MiMalloc;

/// Switchyard: the alignment every plain `mi_malloc` block has when it is
/// at least this large (mimalloc's `MI_MAX_ALIGN_SIZE`; its size classes
/// beyond the first, 8 bytes, are multiples of 16 bytes).
const PLAIN_ALIGN: usize = 16;

/// Switchyard: whether a plain block satisfies a layout: blocks are aligned
/// to 16 bytes, or to their size when smaller, as `std`'s own allocator
/// assumes of the C `malloc`. `mi_malloc_aligned`, used for every block
/// before, takes a slower path whenever its size class's free list is
/// empty (every other allocation in a request loop, as freed blocks wait on
/// a separate list), and for a size that is not a power of two allocates a
/// larger block and aligns inside it.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_malloc(layout.size()) as *mut u8
        } else {
            mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    #[test]
    fn it_frees_allocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_allocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_zero_allocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc_zeroed(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_zero_allocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc_zeroed(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_reallocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            let ptr = alloc.realloc(ptr, layout, 16);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_reallocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            let ptr = alloc.realloc(ptr, layout, 2 << 20);
            alloc.dealloc(ptr, layout);
        }
    }

    /// Switchyard: every size from 1 byte to 64 KiB, in steps that cross
    /// each size class, at every alignment up to 4 KiB, with many blocks
    /// live at once so the free lists empty and refill as a busy process's
    /// do: each block is aligned, holds what is written to it (zeroed when
    /// asked), keeps its contents when grown and shrunk, and goes back.
    #[test]
    fn blocks_are_aligned_and_usable_for_every_layout() {
        let a = MiMalloc;
        let mut sizes: std::vec::Vec<usize> = (1..=512).collect();
        sizes.extend((520..=8192).step_by(24));
        sizes.extend((8192..=65536).step_by(4093));
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            let mut live = std::vec::Vec::new();
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                for zeroed in [false, true] {
                    let p = unsafe {
                        if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        }
                    };
                    assert!(!p.is_null(), "size {} align {}", size, align);
                    assert_eq!(p as usize % align, 0, "size {} align {}", size, align);
                    unsafe {
                        if zeroed {
                            assert!((0..size).all(|i| *p.add(i) == 0), "zeroed {}", size);
                        }
                        core::ptr::write_bytes(p, (size % 251) as u8, size);
                    }
                    live.push((p, layout));
                }
            }
            for (p, layout) in live.iter_mut() {
                let size = layout.size();
                for new_size in [size * 3 + 1, (size / 2).max(1)] {
                    let q = unsafe { a.realloc(*p, *layout, new_size) };
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc {} -> {}", size, new_size);
                    let kept = size.min(new_size);
                    unsafe {
                        assert!((0..kept).all(|i| *q.add(i) == (size % 251) as u8));
                    }
                    *p = q;
                    *layout = Layout::from_size_align(new_size, align).unwrap();
                }
            }
            for (p, layout) in live {
                unsafe { a.dealloc(p, layout) };
            }
        }
    }
}
