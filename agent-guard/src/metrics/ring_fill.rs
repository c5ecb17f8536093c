//! How full the kernel's event ring buffer is, read from the ring's own positions.
//!
//! aya reads the ring but does not say where its positions are, so this maps the ring's first
//! two pages a second time, read-only: page 0 holds the consumer position (where the reader
//! has got to), page 1 the producer position (where the kernel has written to), each an
//! `unsigned long` at the start of its page that only grows (kernel/bpf/ringbuf.c,
//! `struct bpf_ringbuf`; libbpf's ringbuf.c maps them the same way). Their difference is the
//! bytes written and not yet read, record headers and padding included.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicUsize, Ordering},
};

/// A read-only view of a ring buffer map's positions.
#[derive(Debug)]
pub struct RingFill {
    /// Two pages: the consumer page, then the producer page.
    map: NonNull<libc::c_void>,
    page_size: usize,
    size: u32,
}

// SAFETY: the mapping is read-only and only read through atomics; it lives until `drop`.
unsafe impl Send for RingFill {}
// SAFETY: as for `Send`: shared references only make atomic loads.
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the positions of the `BPF_MAP_TYPE_RINGBUF` map `fd`, whose data area is `size`
    /// bytes (its `max_entries`). The mapping outlives `fd`. A map of another type or size
    /// (one pinned by another build, say) is refused as `InvalidInput`.
    pub fn new(fd: BorrowedFd<'_>, size: u32) -> io::Result<RingFill> {
        let (map_type, max_entries) = map_info(fd)?;
        if map_type != BPF_MAP_TYPE_RINGBUF {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("map type {map_type} is not a ring buffer ({BPF_MAP_TYPE_RINGBUF})"),
            ));
        }
        if max_entries != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the ring buffer holds {max_entries} bytes, not {size}"),
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page_size = usize::try_from(page_size).map_err(|_| io::Error::last_os_error())?;
        // SAFETY: a new shared read-only mapping chosen by the kernel; no Rust object aliases
        // it. The kernel refuses it (EINVAL or ENODEV) if `fd` is not a ring buffer map.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page_size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(map).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(RingFill {
            map,
            page_size,
            size,
        })
    }

    /// Bytes written by the kernel and not yet consumed, at most the capacity.
    pub fn used(&self) -> u64 {
        // The consumer first: the producer never falls behind it, so a producer read after it
        // cannot be smaller.
        let consumer = self.position(0);
        let producer = self.position(self.page_size);
        let used = producer.saturating_sub(consumer) as u64;
        used.min(self.size.into())
    }

    /// Capacity of the ring's data area in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn position(&self, offset: usize) -> usize {
        // SAFETY: `offset` is 0 or one page into a two-page mapping that lives as long as
        // `self`, page-aligned and so aligned for `AtomicUsize`; the kernel writes the value
        // with release semantics (smp_store_release) and it is only ever read here.
        let pos = unsafe {
            self.map
                .as_ptr()
                .byte_add(offset)
                .cast::<AtomicUsize>()
                .as_ref()
        };
        pos.map_or(0, |p| p.load(Ordering::Acquire))
    }
}

const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// The type and `max_entries` of map `fd`, from `bpf(BPF_OBJ_GET_INFO_BY_FD)` (aya keeps its
/// own version of this to itself).
fn map_info(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // The start of `struct bpf_map_info`: type, id, key_size, value_size, max_entries. The
    // kernel fills in as much as `info_len` asks for.
    let mut info = [0u32; 5];
    /// `union bpf_attr` as this command reads it.
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: bpf(2) reads `attr` and writes at most `info_len` bytes into `info`; both
    // live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<Attr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info[0], info[4]))
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, with its length; nothing refers to it after this.
        unsafe { libc::munmap(self.map.as_ptr(), 2 * self.page_size) };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};

    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;

    /// Creates a map with `bpf(BPF_MAP_CREATE)`: the first fields of `union bpf_attr` are
    /// map_type, key_size, value_size, max_entries (u32 each); the rest stays zero.
    fn create_map(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> OwnedFd {
        let mut attr = [0u32; 32];
        attr[..4].copy_from_slice(&[map_type, key_size, value_size, max_entries]);
        // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes from a live buffer.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                attr.as_ptr(),
                size_of_val(&attr),
            )
        };
        assert!(
            fd >= 0,
            "BPF_MAP_CREATE (type {map_type}) failed: {}; these tests need root and bpf(2)",
            io::Error::last_os_error()
        );
        // SAFETY: a new fd that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    /// A ring buffer map of `size` bytes (a power of two multiple of the page size).
    pub(crate) fn create_ring(size: u32) -> OwnedFd {
        create_map(BPF_MAP_TYPE_RINGBUF, 0, 0, size)
    }

    #[test]
    fn an_empty_ring_uses_nothing_and_outlives_its_fd() {
        let size = 16 * 4096;
        let fd = create_ring(size);
        let fill = RingFill::new(fd.as_fd(), size).expect("map the ring's positions");
        assert_eq!(fill.used(), 0);
        assert_eq!(fill.size(), size);
        drop(fd);
        assert_eq!(fill.used(), 0, "the mapping keeps the ring alive");
    }

    /// One BPF instruction: opcode, registers, offset, immediate.
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = dst | (src << 4);
        b[2..4].copy_from_slice(&off.to_ne_bytes());
        b[4..8].copy_from_slice(&imm.to_ne_bytes());
        b
    }

    /// A socket filter that writes one 8-byte record into `ring` each time it runs.
    fn load_writer(ring: BorrowedFd<'_>) -> OwnedFd {
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
        const BPF_PSEUDO_MAP_FD: u8 = 1;
        const BPF_FUNC_RINGBUF_OUTPUT: i32 = 130;
        let code: Vec<u8> = [
            insn(0x7a, 10, 0, -8, 42), // *(u64 *)(r10 - 8) = 42
            insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, ring.as_raw_fd()), // r1 = ring
            insn(0, 0, 0, 0, 0),       //   (second half)
            insn(0xbf, 2, 10, 0, 0),   // r2 = r10
            insn(0x07, 2, 0, 0, -8),   // r2 += -8
            insn(0xb7, 3, 0, 0, 8),    // r3 = 8
            insn(0xb7, 4, 0, 0, 0),    // r4 = 0
            insn(0x85, 0, 0, 0, BPF_FUNC_RINGBUF_OUTPUT), // call bpf_ringbuf_output
            insn(0xb7, 0, 0, 0, 0),    // r0 = 0
            insn(0x95, 0, 0, 0, 0),    // exit
        ]
        .concat();
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
        // log_size, log_buf.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SOCKET_FILTER.to_ne_bytes());
        attr[4..8].copy_from_slice(&((code.len() / 8) as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(code.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
        attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
        attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
        // SAFETY: every pointer in `attr` points into a buffer alive across the call.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
        assert!(
            fd >= 0,
            "BPF_PROG_LOAD failed: {}\n{}",
            io::Error::last_os_error(),
            String::from_utf8_lossy(&log).trim_end_matches('\0')
        );
        // SAFETY: a new fd that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    /// Runs `prog` `times` times on an empty packet.
    fn run(prog: BorrowedFd<'_>, times: u32) {
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        let packet = [0u8; 64];
        // union bpf_attr for BPF_PROG_TEST_RUN: prog_fd, retval, data_size_in,
        // data_size_out, data_in, data_out, repeat.
        let mut attr = [0u8; 80];
        attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        attr[16..24].copy_from_slice(&(packet.as_ptr() as u64).to_ne_bytes());
        attr[32..36].copy_from_slice(&times.to_ne_bytes());
        // SAFETY: the packet outlives the call; there is no output buffer.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, attr.as_ptr(), attr.len()) };
        assert_eq!(
            rc,
            0,
            "BPF_PROG_TEST_RUN failed: {}",
            io::Error::last_os_error()
        );
    }

    #[test]
    fn records_written_count_until_they_are_read() {
        use aya::maps::{Map, MapData, RingBuf};

        let size = 4096;
        let fd = create_ring(size);
        let fill = RingFill::new(fd.as_fd(), size).expect("map the ring's positions");
        let prog = load_writer(fd.as_fd());

        // Each record: an 8-byte header and 8 bytes of data.
        run(prog.as_fd(), 3);
        assert_eq!(fill.used(), 3 * 16);

        let data = MapData::from_fd(fd.try_clone().unwrap()).expect("the ring as aya sees it");
        let mut ring = RingBuf::try_from(Map::RingBuf(data)).expect("a RingBuf");
        let first = ring.next().expect("a record");
        assert_eq!(*first, 42u64.to_ne_bytes());
        drop(first);
        assert_eq!(fill.used(), 2 * 16, "one record read");
        while ring.next().is_some() {}
        assert_eq!(fill.used(), 0, "all read");

        // A full ring: records stop fitting (the kernel counts them lost); used stays
        // within the capacity.
        run(prog.as_fd(), size);
        let used = fill.used();
        assert!(
            (u64::from(size) - 16..=u64::from(size)).contains(&used),
            "{used}"
        );
    }

    #[test]
    fn a_map_that_is_no_ring_is_refused() {
        let fd = create_map(BPF_MAP_TYPE_ARRAY, 4, 8, 4096);
        let err = RingFill::new(fd.as_fd(), 4096).expect_err("an array map is no ring");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("not a ring buffer"), "{err}");
    }

    #[test]
    fn a_ring_of_another_size_is_refused() {
        let fd = create_ring(2 * 4096);
        let err = RingFill::new(fd.as_fd(), 4096).expect_err("the size is wrong");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert_eq!(
            err.to_string(),
            "the ring buffer holds 8192 bytes, not 4096"
        );
    }

    #[test]
    fn an_fd_that_is_no_map_is_refused() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = RingFill::new(file.as_fd(), 4096).expect_err("/dev/null is no map");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    }
}
