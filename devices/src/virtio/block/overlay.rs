//! The copy-on-write layer of an ephemeral disk (`-x/--ephemeral`): the guest's writes go to a
//! sparse, unlinked temporary file of the image's size (the "top"), and a bitmap records which
//! 4 KiB clusters live there. Reads of a cluster never written fall through to the image, which
//! is opened read-only and never changes. Starting costs nothing, whatever the image's size (no
//! copy, unlike vmspawn's full or reflinked copy), and everything the guest wrote vanishes with
//! the descriptor when rvmspawn exits, however it exits.
//!
//! A write that covers part of a cluster not yet in the top copies the cluster up first (reads
//! it from the image, merges, writes it whole); whole clusters go straight to the top. Discard
//! and write-zeroes of whole clusters punch holes in the top (which read as zeroes) and mark the
//! clusters written; partial clusters are zeroed through the write path. A flush has nothing to
//! make durable. One lock orders all of it, so two queues never copy the same cluster up at
//! once; ephemeral runs trade that bit of parallelism for simplicity.
//!
//! The bitmap costs one bit per 4 KiB of image (32 KiB per GiB); every offset and length comes
//! from a request that [`super::RequestHandler`] has already checked against the disk's size.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Mutex;

/// The copy-on-write unit.
pub const CLUSTER: u64 = 4096;

/// The written part of an ephemeral disk.
pub struct Overlay {
    top: File,
    size: u64,
    /// One bit per cluster: set when the cluster's bytes are in `top`.
    written: Mutex<Vec<u64>>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// An unlinked, empty temporary file: in `/var/tmp` (on disk, so a large ephemeral write set
/// does not take RAM) with `O_TMPFILE`, else a memfd (RAM) where that fails.
pub fn temporary_file() -> io::Result<File> {
    let tmp = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open("/var/tmp");
    if let Ok(f) = tmp {
        return Ok(f);
    }
    // SAFETY: a valid C string and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"rvmspawn-ephemeral-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl Overlay {
    /// An empty overlay of `size` bytes in `top` (made sparse at that size).
    pub fn new(top: File, size: u64) -> io::Result<Overlay> {
        top.set_len(size)?;
        let clusters = size.div_ceil(CLUSTER);
        let words = usize::try_from(clusters.div_ceil(64))
            .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        Ok(Overlay {
            top,
            size,
            written: Mutex::new(vec![0; words]),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The end of cluster `c`, clipped to the disk.
    fn cluster_end(&self, c: u64) -> u64 {
        ((c + 1) * CLUSTER).min(self.size)
    }

    /// Read `buf.len()` bytes at `offset`: each run of clusters from where it lives.
    pub fn read(&self, base: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bits = self.lock();
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            let c = at / CLUSTER;
            let in_top = bit(&bits, c);
            let mut run_end = self.cluster_end(c);
            while run_end < end && bit(&bits, run_end / CLUSTER) == in_top {
                run_end = self.cluster_end(run_end / CLUSTER);
            }
            let run_end = run_end.min(end);
            let from = (at - offset) as usize;
            let to = (run_end - offset) as usize;
            let src = if in_top { &self.top } else { base };
            src.read_exact_at(&mut buf[from..to], at)?;
            at = run_end;
        }
        Ok(())
    }

    /// Write `buf` at `offset` into the top, copying partly written clusters up first.
    pub fn write(&self, base: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bits = self.lock();
        self.write_locked(&mut bits, base, buf, offset)
    }

    fn write_locked(
        &self,
        bits: &mut [u64],
        base: &File,
        buf: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            let c = at / CLUSTER;
            let c_start = c * CLUSTER;
            let c_end = self.cluster_end(c);
            // Whether the data can go straight to the top for cluster `c` when the write covers
            // `from..`: the cluster is there already, or the write covers all of it.
            let direct = |c: u64, from: u64| {
                bit(bits, c) || (from == c * CLUSTER && end >= self.cluster_end(c))
            };
            if direct(c, at) {
                let mut run_end = c_end;
                while run_end < end && direct(run_end / CLUSTER, run_end) {
                    run_end = self.cluster_end(run_end / CLUSTER);
                }
                let run_end = run_end.min(end);
                let data = &buf[(at - offset) as usize..(run_end - offset) as usize];
                self.top.write_all_at(data, at)?;
                for k in c..run_end.div_ceil(CLUSTER) {
                    set(bits, k);
                }
                at = run_end;
            } else {
                // Copy up: the cluster from the image, the new bytes over it, all to the top.
                let mut cluster = [0u8; CLUSTER as usize];
                let len = (c_end - c_start) as usize;
                base.read_exact_at(&mut cluster[..len], c_start)?;
                let n_end = c_end.min(end);
                cluster[(at - c_start) as usize..(n_end - c_start) as usize]
                    .copy_from_slice(&buf[(at - offset) as usize..(n_end - offset) as usize]);
                self.top.write_all_at(&cluster[..len], c_start)?;
                set(bits, c);
                at = n_end;
            }
        }
        Ok(())
    }

    /// Make `len` bytes at `offset` read as zeroes (discard and write-zeroes alike).
    pub fn zero(&self, base: &File, offset: u64, len: u64) -> io::Result<()> {
        let mut bits = self.lock();
        let end = offset + len;
        let zeroes = [0u8; CLUSTER as usize];
        // Whole clusters inside the range (the disk's last, partial cluster counts as whole when
        // the range reaches the end): holes in the top.
        let first_whole = offset.div_ceil(CLUSTER);
        let last_whole = if end == self.size {
            self.size.div_ceil(CLUSTER)
        } else {
            end / CLUSTER
        }; // exclusive
        if first_whole >= last_whole {
            // No whole cluster (less than two clusters' bytes): through the write path.
            let mut at = offset;
            while at < end {
                let n = (end - at).min(CLUSTER);
                self.write_locked(&mut bits, base, &zeroes[..n as usize], at)?;
                at += n;
            }
            return Ok(());
        }
        let from = first_whole * CLUSTER;
        let to = self.cluster_end(last_whole - 1);
        if punch(&self.top, from, to - from).is_err() {
            let mut at = from;
            while at < to {
                let n = (to - at).min(CLUSTER);
                self.top.write_all_at(&zeroes[..n as usize], at)?;
                at += n;
            }
        }
        for k in first_whole..last_whole {
            set(&mut bits, k);
        }
        // The partial clusters at either end (each less than a cluster).
        if offset < from {
            let n = (from - offset) as usize;
            self.write_locked(&mut bits, base, &zeroes[..n], offset)?;
        }
        if to < end {
            let n = (end - to) as usize;
            self.write_locked(&mut bits, base, &zeroes[..n], to)?;
        }
        Ok(())
    }

    /// How many clusters the guest has written (for tests and the note's figures).
    pub fn written_clusters(&self) -> u64 {
        self.lock().iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

fn bit(bits: &[u64], c: u64) -> bool {
    bits.get((c / 64) as usize)
        .is_some_and(|w| w & (1 << (c % 64)) != 0)
}

fn set(bits: &mut [u64], c: u64) {
    if let Some(w) = bits.get_mut((c / 64) as usize) {
        *w |= 1 << (c % 64);
    }
}

fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate only reads its scalar arguments.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_with(bytes: &[u8]) -> File {
        let f = temporary_file().unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f
    }

    /// A byte pattern that differs per offset.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The overlay against a plain copy of the image, after the same operations.
    fn check(ov: &Overlay, base: &File, model: &[u8]) {
        let mut got = vec![0u8; model.len()];
        ov.read(base, &mut got, 0).unwrap();
        assert!(got == model, "overlay and model differ");
        // And at odd offsets and lengths.
        for (off, len) in [(1, 7), (4095, 2), (4096, 4096), (5000, 9000), (0, 512)] {
            if off + len <= model.len() {
                let mut part = vec![0u8; len];
                ov.read(base, &mut part, off as u64).unwrap();
                assert_eq!(part, model[off..off + len], "at {off}+{len}");
            }
        }
    }

    #[test]
    fn writes_go_to_the_top_and_the_image_never_changes() {
        // 5 clusters and a partial sixth: the size need not be a cluster multiple.
        let size = 5 * CLUSTER as usize + 1000;
        let original = pattern(size, 1);
        let base = base_with(&original);
        let ov = Overlay::new(temporary_file().unwrap(), size as u64).unwrap();
        let mut model = original.clone();
        check(&ov, &base, &model);
        // A partial write inside one cluster: copied up.
        let w = pattern(100, 9);
        ov.write(&base, &w, 4100).unwrap();
        model[4100..4200].copy_from_slice(&w);
        assert_eq!(ov.written_clusters(), 1);
        // Whole clusters and partial ends, spanning written and unwritten clusters.
        let w = pattern(2 * CLUSTER as usize + 300, 77);
        ov.write(&base, &w, CLUSTER - 150).unwrap();
        model[CLUSTER as usize - 150..][..w.len()].copy_from_slice(&w);
        // Into the partial last cluster.
        let w = pattern(512, 5);
        ov.write(&base, &w, size as u64 - 512).unwrap();
        model[size - 512..].copy_from_slice(&w);
        check(&ov, &base, &model);
        // Zeroes: whole clusters punched, partial ends written.
        ov.zero(&base, 100, 3 * CLUSTER).unwrap();
        model[100..100 + 3 * CLUSTER as usize].fill(0);
        ov.zero(&base, size as u64 - 700, 700).unwrap();
        model[size - 700..].fill(0);
        check(&ov, &base, &model);
        let mut image = vec![0u8; size];
        base.read_exact_at(&mut image, 0).unwrap();
        assert!(image == original, "the image changed");
    }

    #[test]
    fn random_operations_match_a_plain_copy() {
        let size = 64 * CLUSTER as usize + 512;
        let original = pattern(size, 3);
        let base = base_with(&original);
        let ov = Overlay::new(temporary_file().unwrap(), size as u64).unwrap();
        let mut model = original.clone();
        // A small deterministic generator (xorshift): sector-aligned offsets and lengths, as
        // the guest sends them.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..400u32 {
            let sectors = (size / 512) as u64;
            let start = next(sectors);
            let count = 1 + next((sectors - start).min(40));
            let (off, len) = ((start * 512) as usize, (count * 512) as usize);
            if next(4) == 0 {
                ov.zero(&base, off as u64, len as u64).unwrap();
                model[off..off + len].fill(0);
            } else {
                let w = pattern(len, round as u8);
                ov.write(&base, &w, off as u64).unwrap();
                model[off..off + len].copy_from_slice(&w);
            }
        }
        check(&ov, &base, &model);
        let mut image = vec![0u8; size];
        base.read_exact_at(&mut image, 0).unwrap();
        assert!(image == original);
    }
}
