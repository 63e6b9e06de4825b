//! Sending a range of a segment file to a client socket with `sendfile(2)`.
//!
//! Why: a fetch response is mostly record bytes already in the page cache. Reading them into
//! a buffer and writing that buffer to the socket copies every byte twice through user space
//! and allocates (and page-faults in) a buffer per fetch; `sendfile` hands the page-cache
//! pages to the socket directly. The bytes are whole batches exactly as stored (see
//! `FetchSlice`), so nothing needs to be looked at on the way.
//!
//! The one system call needs `unsafe`; it is confined here. Other systems read and write.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use tokio::net::TcpStream;

/// Largest count one `sendfile` call takes on Linux.
const MAX_PER_CALL: usize = 0x7fff_f000;

/// Sends `len` bytes of `file` from `offset` to `socket`, waiting for the socket to take them.
/// Fails with `UnexpectedEof` if the file ends first (it was truncated since the slice was
/// cut): the frame is then short, so the caller must close the connection.
pub(crate) async fn send_file(socket: &TcpStream, file: &File, offset: u64, len: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut left = len;
        while left > 0 {
            socket.writable().await?;
            let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
                // SAFETY: both descriptors are open while `socket` and `file` are borrowed;
                // the kernel writes only `offset`, which is ours and live for the call.
                let n = unsafe {
                    libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut offset, left.min(MAX_PER_CALL))
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment ended before the fetch slice"))
                }
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::os::unix::fs::FileExt;
        use tokio::io::AsyncWriteExt;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        let mut socket = socket;
        socket.write_all(&buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn sends_the_range_and_refuses_a_range_past_the_end() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("segment.log");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path).and_then(|mut f| f.write_all(&content)).expect("write");
        let file = File::open(&path).expect("open");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let reader = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            socket.read_to_end(&mut got).await.expect("read");
            got
        });
        let socket = TcpStream::connect(address).await.expect("connect");
        // More than a socket buffer: the send must wait for the reader, not fail.
        send_file(&socket, &file, 1_000, 2_500_000).await.expect("sends");
        let past_end = send_file(&socket, &file, 2_999_000, 5_000).await;
        assert_eq!(past_end.expect_err("short file").kind(), io::ErrorKind::UnexpectedEof);
        drop(socket);
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), 2_500_000 + 1_000, "the range, then what the short send managed");
        assert!(got[..2_500_000] == content[1_000..2_501_000]);
        assert!(got[2_500_000..] == content[2_999_000..]);
    }
}
