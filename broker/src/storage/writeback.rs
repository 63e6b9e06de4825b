//! Starting writeback of a file range without waiting for it: Linux's `sync_file_range`.
//!
//! Why: at hundreds of MB/s, a periodic `fdatasync` of everything appended since the last one
//! writes a whole second's worth of data in one burst, and requests queue behind it (journal
//! commits, device queue, CPU for building the I/O). Handing each few hundred KB to the disk as
//! soon as it is appended spreads that work out, so the fsync that durability needs (still
//! `fdatasync`, unchanged) finds almost nothing left to write. This is only a hint: it makes
//! nothing durable (no metadata, no disk cache flush), so no offset is marked flushed by it.
//!
//! The one system call needs `unsafe`; it is confined here.
#![allow(unsafe_code)]

use std::fs::File;

/// Asks the kernel to start writing `bytes` bytes of `file` from `offset` to disk; returns
/// once the write-out is queued (it may block while the device queue is full, so call it off
/// the async runtime). On other systems it does nothing: the fsync still does all the work.
pub(crate) fn start(file: &File, offset: u64, bytes: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(bytes)) = (i64::try_from(offset), i64::try_from(bytes)) else {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        };
        // SAFETY: the descriptor is open for as long as `file` is borrowed; the call reads no
        // memory of ours.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, bytes, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn starting_writeback_keeps_the_bytes_and_rejects_a_closed_range() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("segment.log");
        let mut file = File::options().create(true).append(true).read(true).open(&path).expect("open");
        file.write_all(&[7u8; 10_000]).expect("write");
        start(&file, 0, 10_000).expect("writeback starts");
        start(&file, 4096, 0).expect("a zero length means to the end of the file");
        assert_eq!(std::fs::read(&path).expect("read back"), vec![7u8; 10_000]);
        #[cfg(target_os = "linux")]
        assert!(start(&file, u64::MAX, 1).is_err(), "an offset past i64 is refused, not wrapped");
    }
}
