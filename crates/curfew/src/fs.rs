//! Reading files without letting a path poison the worker pool.
//!
//! A handler that reads a file named by the client is the paper's *ReadDoS*:
//! the client names `/dev/zero`, a huge file, or a FIFO that never gets
//! data, and the read holds a worker thread for as long as the client likes.
//! Node.js used to issue one `read` for a whole file; the paper's authors
//! partitioned `fs.readFile` into chunks. [`read`] does the same on curfew's
//! worker pool: it reads in 64 KiB chunks and calls
//! [`checkpoint`](crate::checkpoint) between them, so an endless file ends in
//! a timeout at the job budget and the thread is handed back, not abandoned.
//!
//! On Unix, FIFOs, sockets and character devices are opened non-blocking and
//! waited on in short slices with a checkpoint after each, so a FIFO that
//! never gets a writer or never gets data ends in a timeout too, with no
//! thread left blocked in `open` or `read`.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! let rt = curfew::Runtime::builder()
//!     .event_threads(1)
//!     .job_budget(Duration::from_millis(500))
//!     .build()?;
//! let dir = std::env::temp_dir().join(format!("curfew-fs-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! std::fs::write(dir.join("hello.txt"), "hello")?;
//!
//! rt.block_on(async {
//!     assert_eq!(curfew::fs::read(dir.join("hello.txt")).await.unwrap(), b"hello");
//!     // An endless file: refused once past the limit, or answered with a
//!     // timeout at the job budget, whichever comes first.
//!     # #[cfg(target_os = "linux")] {
//!     let err = curfew::fs::read_limited("/dev/zero", 64 << 20).await.unwrap_err();
//!     assert!(matches!(
//!         err.kind(),
//!         std::io::ErrorKind::TimedOut | std::io::ErrorKind::FileTooLarge
//!     ));
//!     # }
//! });
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```

use std::io::{self, Read};
use std::path::Path;

use crate::TimeoutError;

/// Bytes read between two checkpoints.
const CHUNK: usize = 64 * 1024;

/// The most a read reserves up front from a regular file's size. The size is
/// only a hint that the client may control (a sparse file can claim a
/// terabyte); past this, the buffer grows as data actually arrives.
const MAX_RESERVE: usize = 1 << 20;

/// Reads the whole file at `path` on the worker pool, in chunks, under the
/// job budget: the counterpart of `tokio::fs::read` and `std::fs::read`.
///
/// A file that takes longer than the job budget to read (huge, endless, or a
/// FIFO that never delivers) ends in an error of kind
/// [`TimedOut`](io::ErrorKind::TimedOut) whose inner error is the
/// [`TimeoutError`]; a full pool queue in one of kind
/// [`WouldBlock`](io::ErrorKind::WouldBlock).
///
/// Memory grows with what is read, never with what the file claims: at most
/// 1 MiB is reserved from the file's size, and the buffer grows as data
/// arrives, until the budget runs out. Should memory run out first, the read
/// ends in an error of kind [`OutOfMemory`](io::ErrorKind::OutOfMemory)
/// instead of aborting the process. To bound memory, use [`read_limited`].
pub async fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    read_limited(path, usize::MAX).await
}

/// Like [`read`], but fails with [`FileTooLarge`](io::ErrorKind::FileTooLarge)
/// as soon as the file proves longer than `limit` bytes: a regular file whose
/// size is over the limit before anything is allocated, any other file as
/// soon as it has delivered more. The buffer never holds more than `limit`
/// bytes.
pub async fn read_limited(path: impl AsRef<Path>, limit: usize) -> io::Result<Vec<u8>> {
    let path = path.as_ref().to_path_buf();
    crate::spawn_blocking(move || read_chunked(&path, limit)).await?
}

fn timed_out(e: TimeoutError) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, e)
}

/// The job: read `path` in chunks with a checkpoint between them.
fn read_chunked(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let (mut file, waitable) = open(path)?;
    let meta = file.metadata()?;
    let regular = meta.is_file();
    let mut buf = Vec::new();
    if regular {
        let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        if len > limit {
            return Err(too_large(limit));
        }
        // A hint, not a promise: the file may be sparse, or change size.
        reserve(&mut buf, len.min(MAX_RESERVE))?;
    }
    let mut chunk = vec![0u8; CHUNK];
    loop {
        crate::checkpoint().map_err(timed_out)?;
        // A FIFO with no writer yet reads as end-of-file; wait until it has
        // data or a writer has come and gone, one short slice at a time.
        if waitable && !wait_readable(&file)? {
            continue;
        }
        let n = match file.read(&mut chunk) {
            Ok(0) => return Ok(buf),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n > limit - buf.len() {
            return Err(too_large(limit));
        }
        if buf.capacity() - buf.len() < n {
            // Double, as `Vec` would, but never past the limit, and fail
            // with an error rather than abort when memory runs out.
            let want = buf.capacity().max(CHUNK).min(limit - buf.len()).max(n);
            reserve(&mut buf, want)?;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Makes room for `additional` more bytes, or reports that memory ran out.
fn reserve(buf: &mut Vec<u8>, additional: usize) -> io::Result<()> {
    buf.try_reserve_exact(additional).map_err(|e| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "cannot grow the read buffer of {} bytes by {additional}: {e}",
                buf.len()
            ),
        )
    })
}

fn too_large(limit: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("file is longer than the limit of {limit} bytes"),
    )
}

/// Opens `path` for reading; says whether it must be waited on (FIFOs,
/// sockets and character devices) rather than read straight away.
#[cfg(unix)]
fn open(path: &Path) -> io::Result<(std::fs::File, bool)> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // Non-blocking, so that opening a FIFO with no writer returns at once
    // instead of blocking the thread in `open`.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let ft = file.metadata()?.file_type();
    let waitable = ft.is_fifo() || ft.is_socket() || ft.is_char_device();
    if !waitable {
        // Regular files and block devices do not honour O_NONBLOCK anyway;
        // restore ordinary blocking reads.
        set_nonblocking(&file, false)?;
    }
    Ok((file, waitable))
}

#[cfg(not(unix))]
fn open(path: &Path) -> io::Result<(std::fs::File, bool)> {
    Ok((std::fs::File::open(path)?, false))
}

#[cfg(unix)]
fn set_nonblocking(file: &std::fs::File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns for the
    // whole call; F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to one slice for `file` to become readable (data, or a writer
/// that has hung up). The caller checks the budget between slices.
#[cfg(unix)]
fn wait_readable(file: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut pfd, 1, 5) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(r > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
}

#[cfg(not(unix))]
fn wait_readable(_: &std::fs::File) -> io::Result<bool> {
    Ok(true)
}
