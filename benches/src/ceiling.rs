//! The machine's ceiling: bytes through a loopback TCP socket into a file, no protocol.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use crate::Throughput;

const CHUNK_BYTES: usize = 64 * 1024;

/// Pushes `total_bytes` from one thread through loopback TCP to another that appends them to
/// a temporary file, and times it from the first byte sent to the last byte written.
pub fn measure_ceiling(total_bytes: u64) -> anyhow::Result<Throughput> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ceiling.bin");
    let receiver = std::thread::spawn(move || -> anyhow::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        let mut file = std::fs::File::create(&path)?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut received = 0u64;
        loop {
            let n = socket.read(&mut buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])?;
            received += n as u64;
        }
        Ok(received)
    });
    let chunk: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr)?;
    let mut sent = 0u64;
    while sent < total_bytes {
        let n = (total_bytes - sent).min(CHUNK_BYTES as u64) as usize;
        socket.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    drop(socket);
    let received = receiver.join().map_err(|_| anyhow::anyhow!("ceiling receiver panicked"))??;
    anyhow::ensure!(received == total_bytes, "ceiling receiver got {received} of {total_bytes} bytes");
    Ok(Throughput { bytes: total_bytes, records: 0, elapsed: started.elapsed(), cpu: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_moves_every_byte() {
        let result = measure_ceiling(3 * CHUNK_BYTES as u64 + 17).expect("ceiling runs");
        assert_eq!(result.bytes, 3 * CHUNK_BYTES as u64 + 17);
        assert!(result.mb_per_s() > 0.0);
    }
}
