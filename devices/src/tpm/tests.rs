//! Tests of the CRB register file, the control protocol against a fake swtpm (a test thread
//! on the other end of the sockets) and, end to end, against the real swtpm.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::swtpm::*;
use super::*;
use crate::{AcpiDevice, BusDevice};

const ALL_CAPS: u32 = CAP_INIT
    | CAP_SHUTDOWN
    | CAP_GET_TPMESTABLISHED
    | CAP_SET_LOCALITY
    | CAP_CANCEL_TPM_CMD
    | CAP_RESET_TPMESTABLISHED
    | CAP_STOP
    | CAP_SET_DATAFD
    | CAP_SET_BUFFERSIZE;

// ---- register access helpers, as Linux's tpm_crb makes them --------------------------------

fn rd(crb: &mut TpmCrb, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    crb.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn wr(crb: &mut TpmCrb, offset: u64, v: u32) {
    crb.write(offset, &v.to_le_bytes());
}

/// Request locality 0 and cmdReady, as the driver does before a command.
fn ready(crb: &mut TpmCrb) {
    wr(crb, 0x08, 1);
    assert_eq!(
        rd(crb, 0x00) & 0x82,
        0x82,
        "locality assigned, registers valid"
    );
    assert_eq!(rd(crb, 0x0c) & 1, 1, "locality granted");
    wr(crb, 0x40, 1);
    assert_eq!(rd(crb, 0x40), 0, "CTRL_REQ reads 0 once acted on");
    assert_eq!(rd(crb, 0x44) & 2, 0, "no longer idle");
}

/// The accesses (offset, width) that cover `len` bytes from `offset`: 8, then 4, 2 and 1
/// bytes, as memcpy_toio and memcpy_fromio make them.
fn pieces(offset: u64, len: usize) -> Vec<(u64, std::ops::Range<usize>)> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < len {
        let n = [8, 4, 2, 1].into_iter().find(|n| at + n <= len).unwrap();
        v.push((offset + at as u64, at..at + n));
        at += n;
    }
    v
}

fn write_bytes(crb: &mut TpmCrb, offset: u64, bytes: &[u8]) {
    for (o, r) in pieces(offset, bytes.len()) {
        crb.write(o, &bytes[r]);
    }
}

fn read_bytes(crb: &mut TpmCrb, offset: u64, buf: &mut [u8]) {
    for (o, r) in pieces(offset, buf.len()) {
        crb.read(o, &mut buf[r]);
    }
}

/// Put `command` in the buffer and START.
fn start(crb: &mut TpmCrb, command: &[u8]) {
    write_bytes(crb, 0x80, command);
    wr(crb, 0x48, 0);
    wr(crb, 0x4c, 1);
}

/// Poll START until it clears (as the guest does, bounded), then read the response.
fn finish(crb: &mut TpmCrb) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(150);
    while rd(crb, 0x4c) & 1 != 0 {
        assert!(Instant::now() < deadline, "START never cleared");
        std::thread::yield_now();
    }
    let mut header = [0u8; 10];
    read_bytes(crb, 0x80, &mut header);
    let size = (command::header_size(&header).unwrap() as usize).clamp(10, BUFFER_SIZE);
    let mut r = vec![0u8; size];
    read_bytes(crb, 0x80, &mut r);
    r
}

fn run_command(crb: &mut TpmCrb, command: &[u8]) -> Vec<u8> {
    start(crb, command);
    finish(crb)
}

fn get_random(n: u16) -> Vec<u8> {
    command::build(command::TPM_ST_NO_SESSIONS, 0x17b, &n.to_be_bytes())
}

fn pcr_read_sha256(pcr: u32) -> Vec<u8> {
    let mut select = [0u8; 3];
    select[(pcr / 8) as usize] = 1 << (pcr % 8);
    let mut body = vec![0, 0, 0, 1, 0, 0x0b, 3];
    body.extend_from_slice(&select);
    command::build(command::TPM_ST_NO_SESSIONS, 0x17e, &body)
}

/// The SHA-256 digest in a TPM2_PCR_Read response of one PCR.
fn pcr_value(response: &[u8]) -> [u8; 32] {
    assert_eq!(command::response_code(response), Some(0), "{response:02x?}");
    response[30..62].try_into().unwrap()
}

/// A synchronous TPM whose responses `f` makes, and a count of the commands it got.
fn sync_tpm(f: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> (Arc<Tpm>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let tpm = Tpm::with_responder(Box::new(move |cmd| {
        c.fetch_add(1, Ordering::SeqCst);
        f(cmd)
    }))
    .unwrap();
    (tpm, calls)
}

fn ok_response(extra: &[u8]) -> Vec<u8> {
    command::build(command::TPM_ST_NO_SESSIONS, 0, extra)
}

// ---- the register file ---------------------------------------------------------------------

#[test]
fn registers_in_their_reset_state() {
    let (tpm, _) = sync_tpm(|_| ok_response(&[]));
    let mut crb = tpm.crb();
    assert_eq!(rd(&mut crb, 0x00), 0x80, "tpmRegValidSts only");
    assert_eq!(rd(&mut crb, 0x0c), 0);
    assert_eq!(rd(&mut crb, 0x30) & 0xf, 1, "CRB interface active");
    assert_eq!(rd(&mut crb, 0x30) >> 4 & 0xf, 1, "interface version 1");
    assert_eq!(rd(&mut crb, 0x30) >> 8 & 1, 0, "locality 0 only");
    assert_eq!(rd(&mut crb, 0x30) >> 14 & 1, 1, "CapCRB");
    assert_eq!(rd(&mut crb, 0x30) >> 17 & 3, 1, "CRB selected");
    assert_eq!(rd(&mut crb, 0x44), 2, "tpmIdle, no error");
    assert_eq!(rd(&mut crb, 0x4c), 0);
    assert_eq!(rd(&mut crb, 0x58), 3968);
    assert_eq!(rd(&mut crb, 0x5c), 0xfed4_0080);
    assert_eq!(rd(&mut crb, 0x60), 0);
    assert_eq!(rd(&mut crb, 0x64), 3968);
    let mut rsp = [0u8; 8];
    crb.read(0x68, &mut rsp);
    assert_eq!(
        u64::from_le_bytes(rsp),
        0xfed4_0080,
        "an 8-byte RSP_ADDR read"
    );
    // Byte and word reads of a register see its bytes.
    let mut b = [0u8; 1];
    crb.read(0x5d, &mut b);
    assert_eq!(b[0], 0x00);
    crb.read(0x5f, &mut b);
    assert_eq!(b[0], 0xfe);
    let mut w = [0u8; 2];
    crb.read(0x5e, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0xfed4);
    // Sizes a bus never makes read as ones; past the end too.
    let mut odd = [0u8; 3];
    crb.read(0x58, &mut odd);
    assert_eq!(odd, [0xff; 3]);
    crb.read(0xfff, &mut w);
    assert_eq!(w, [0xff; 2]);
}

#[test]
fn a_command_runs_only_when_ready_and_assigned() {
    let (tpm, calls) = sync_tpm(|_| ok_response(&[7; 4]));
    let mut crb = tpm.crb();
    let cmd = get_random(4);
    // START while idle and without the locality: ignored, nothing reaches the TPM.
    start(&mut crb, &cmd);
    assert_eq!(rd(&mut crb, 0x4c), 0);
    wr(&mut crb, 0x40, 1);
    start(&mut crb, &cmd);
    assert_eq!(rd(&mut crb, 0x4c), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "START without locality");
    // Locality but idle again (goIdle).
    wr(&mut crb, 0x08, 1);
    wr(&mut crb, 0x40, 2);
    assert_eq!(rd(&mut crb, 0x44) & 2, 2);
    start(&mut crb, &cmd);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "START while idle");
    ready(&mut crb);
    let r = run_command(&mut crb, &cmd);
    assert_eq!(r, ok_response(&[7; 4]));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Relinquish: the locality goes, and START with it.
    wr(&mut crb, 0x08, 2);
    assert_eq!(rd(&mut crb, 0x00) & 2, 0);
    assert_eq!(rd(&mut crb, 0x0c) & 1, 0);
    start(&mut crb, &cmd);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A fresh machine's device starts in the reset state.
    let mut crb2 = tpm.crb();
    assert_eq!(rd(&mut crb2, 0x00), 0x80);
    assert_eq!(rd(&mut crb2, 0x44), 2);
}

#[test]
fn command_sizes_the_tpm_must_refuse() {
    let (tpm, calls) = sync_tpm(|_| ok_response(&[]));
    let mut crb = tpm.crb();
    ready(&mut crb);
    let mut big = get_random(4);
    big[2..6].copy_from_slice(&3969u32.to_be_bytes());
    let mut huge = get_random(4);
    huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut small = get_random(4);
    small[2..6].copy_from_slice(&9u32.to_be_bytes());
    let mut zero = get_random(4);
    zero[2..6].copy_from_slice(&0u32.to_be_bytes());
    for c in [big, huge, small, zero] {
        let r = run_command(&mut crb, &c);
        assert_eq!(r, command::error_response(command::TPM_RC_COMMAND_SIZE));
    }
    // A TPM 1.2 tag, and swtpm's own framing (TPM2_SEND_COMMAND, which picks a locality).
    let mut v12 = get_random(4);
    v12[..2].copy_from_slice(&[0x00, 0xc1]);
    let r = run_command(&mut crb, &v12);
    assert_eq!(command::response_code(&r), Some(command::TPM_RC_BAD_TAG));
    // (Its size field would be 0x0008_xxxx: refused for its size already.)
    let mut framed = vec![0u8, 0, 0, 8, 4];
    framed.resize(20, 0);
    let r = run_command(&mut crb, &framed);
    assert_eq!(
        command::response_code(&r),
        Some(command::TPM_RC_COMMAND_SIZE)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The largest command that fits goes through.
    let mut max = command::build(command::TPM_ST_NO_SESSIONS, 0x17b, &[0; 3958]);
    assert_eq!(max.len(), 3968);
    assert_eq!(run_command(&mut crb, &max), ok_response(&[]));
    max.push(0);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        rd(&mut crb, 0x44) & 1,
        0,
        "no tpmSts for the guest's mistakes"
    );
}

#[test]
fn bad_responses_fail_the_command_only() {
    let mut oversized = ok_response(&[0; 3959]);
    oversized[2..6].copy_from_slice(&3969u32.to_be_bytes());
    let mut mismatched = ok_response(&[0; 10]);
    mismatched[2..6].copy_from_slice(&12u32.to_be_bytes());
    for bad in [vec![], vec![0x80, 1, 0, 0, 0], oversized, mismatched] {
        let (tpm, _) = sync_tpm(move |_| bad.clone());
        let mut crb = tpm.crb();
        ready(&mut crb);
        let r = run_command(&mut crb, &get_random(4));
        assert_eq!(r, command::error_response(command::TPM_RC_FAILURE));
        assert_eq!(rd(&mut crb, 0x44) & 1, 0);
    }
}

#[test]
fn hostile_accesses_never_panic_and_the_device_still_works() {
    let (tpm, _) = sync_tpm(|_| ok_response(&[1; 3]));
    let mut crb = tpm.crb();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let sizes = [0usize, 1, 2, 3, 4, 5, 8, 16];
    for _ in 0..200_000 {
        let r = next();
        let size = sizes[(r % 8) as usize];
        // Mostly the registers, sometimes anywhere (and past the end).
        let offset = if r & 0x100 != 0 {
            (r >> 16) % 0x80
        } else {
            (r >> 16) % 0x1010
        };
        let mut data = vec![0u8; size];
        if r & 0x200 != 0 {
            crb.read(offset, &mut data);
        } else {
            data.iter_mut().for_each(|b| *b = (next() & 0xf) as u8);
            crb.write(offset, &data);
        }
    }
    ready(&mut crb);
    assert_eq!(
        run_command(&mut crb, &get_random(5)),
        ok_response(&[1; 3]),
        "the device works after the storm"
    );
}

// ---- ACPI -----------------------------------------------------------------------------------

#[test]
fn acpi_tpm2_table_and_dsdt_device() {
    let (tpm, _) = sync_tpm(|_| ok_response(&[]));
    let crb = tpm.crb();
    let tables = crb.acpi_tables();
    assert_eq!(tables.len(), 1);
    let t = &tables[0];
    assert_eq!(&t[..4], b"TPM2");
    assert_eq!(t.len(), 76);
    assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 76);
    assert_eq!(t[8], 4, "revision 4");
    assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
    assert_eq!(
        u16::from_le_bytes(t[36..38].try_into().unwrap()),
        0,
        "client"
    );
    assert_eq!(
        u64::from_le_bytes(t[40..48].try_into().unwrap()),
        0xfed4_0040
    );
    assert_eq!(u32::from_le_bytes(t[48..52].try_into().unwrap()), 7, "CRB");
    assert_eq!(
        &t[52..],
        &[0u8; 24],
        "no start-method parameters, no event log"
    );

    let mut aml = Vec::new();
    crb.dsdt_aml(&mut aml);
    let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"TPM0"));
    assert!(has(b"_HID\x0dMSFT0101\x00"), "{aml:02x?}");
    // Memory32Fixed, read-write, 0xFED40000, 0x1000.
    assert!(has(&[0x86, 9, 0, 1, 0, 0, 0xd4, 0xfe, 0, 0x10, 0, 0]));
    // Method (_STA) { Return (0x0F) }.
    assert!(
        has(&[b'_', b'S', b'T', b'A', 0, 0xa4, 0x0a, 0x0f]),
        "{aml:02x?}"
    );
}

// ---- the control protocol against a fake swtpm ----------------------------------------------

/// How the fake data channel answers a command.
type DataFn = Box<dyn FnMut(&[u8]) -> Option<Vec<u8>> + Send>;

/// A fake swtpm: serves the control channel on a thread, and the data channel it is given on
/// another. Every control command is reported on `log`.
struct Fake {
    caps: u32,
    /// A control command answered with this error result.
    fail: Option<(u32, u32)>,
    /// Answer nothing at all.
    silent: bool,
    data: Option<DataFn>,
}

impl Fake {
    fn new(data: impl FnMut(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> Fake {
        Fake {
            caps: ALL_CAPS,
            fail: None,
            silent: false,
            data: Some(Box::new(data)),
        }
    }

    /// Start it; returns our end of the control channel and the log of (command, payload).
    fn spawn(mut self) -> (UnixStream, mpsc::Receiver<(u32, Vec<u8>)>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(200)))
            .unwrap();
        let (log, log_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = theirs;
            loop {
                let mut cmd = [0u8; 4];
                let Ok((n, fd)) = s.recv_with_fd(&mut cmd) else {
                    return;
                };
                if n != 4 {
                    return;
                }
                let cmd = u32::from_be_bytes(cmd);
                let payload_len = match cmd {
                    CMD_INIT | CMD_SET_LOCALITY | CMD_RESET_TPMESTABLISHED | CMD_SET_BUFFERSIZE => {
                        4
                    }
                    _ => 0,
                };
                let mut payload = vec![0u8; payload_len];
                if s.read_exact(&mut payload).is_err() {
                    return;
                }
                let _ = log.send((cmd, payload));
                if self.silent {
                    continue;
                }
                if let Some((c, code)) = self.fail
                    && c == cmd
                {
                    let _ = s.write_all(&code.to_be_bytes());
                    continue;
                }
                let mut reply = 0u32.to_be_bytes().to_vec();
                match cmd {
                    CMD_GET_CAPABILITY => reply.extend_from_slice(&self.caps.to_be_bytes()),
                    CMD_SET_BUFFERSIZE => {
                        for v in [3968u32, 2560, 4096] {
                            reply.extend_from_slice(&v.to_be_bytes());
                        }
                    }
                    CMD_GET_TPMESTABLISHED => reply.extend_from_slice(&[1, 0, 0, 0]),
                    CMD_SET_DATAFD => {
                        let data = UnixStream::from(OwnedFd::from(fd.expect("a data fd")));
                        let f = self.data.take().expect("one data channel");
                        std::thread::spawn(move || serve_data(data, f));
                    }
                    _ => {}
                }
                if s.write_all(&reply).is_err() {
                    return;
                }
            }
        });
        (ours, log_rx)
    }
}

/// The fake data channel: reads a command (header, then the rest), answers what `f` says;
/// `None` closes the channel.
fn serve_data(mut s: UnixStream, mut f: DataFn) {
    loop {
        let mut header = [0u8; 10];
        if s.read_exact(&mut header).is_err() {
            return;
        }
        let size = command::header_size(&header).unwrap() as usize;
        let mut cmd = header.to_vec();
        cmd.resize(size.max(10), 0);
        if s.read_exact(&mut cmd[10..]).is_err() {
            return;
        }
        match f(&cmd) {
            Some(r) => {
                if s.write_all(&r).is_err() {
                    return;
                }
            }
            None => return,
        }
    }
}

fn commands(log: &mpsc::Receiver<(u32, Vec<u8>)>) -> Vec<u32> {
    log.try_iter().map(|(c, _)| c).collect()
}

#[test]
fn connect_speaks_the_control_protocol_in_order() {
    let (ctrl, log) = Fake::new(|_| Some(ok_response(&[]))).spawn();
    let swtpm = Swtpm::connect(ctrl).unwrap();
    assert_eq!(swtpm.buffer_size, 3968);
    let got: Vec<(u32, Vec<u8>)> = log.try_iter().collect();
    assert_eq!(
        got,
        [
            (CMD_GET_CAPABILITY, vec![]),
            (CMD_SET_DATAFD, vec![]),
            (CMD_STOP, vec![]),
            (CMD_SET_BUFFERSIZE, 3968u32.to_be_bytes().to_vec()),
            (CMD_INIT, vec![0, 0, 0, 0]),
            (CMD_SET_LOCALITY, vec![0, 0, 0, 0]),
        ]
    );
}

#[test]
fn a_missing_capability_is_named() {
    let mut fake = Fake::new(|_| Some(ok_response(&[])));
    fake.caps = ALL_CAPS & !(CAP_SET_DATAFD | CAP_STOP);
    let (ctrl, _log) = fake.spawn();
    let e = Swtpm::connect(ctrl).unwrap_err();
    assert_eq!(
        e.to_string(),
        "swtpm lacks the control commands STOP, SET_DATAFD"
    );
    assert_eq!(e.errno(), libc::EOPNOTSUPP);
    // CANCEL_TPM_CMD is optional.
    let mut fake = Fake::new(|_| Some(ok_response(&[])));
    fake.caps = ALL_CAPS & !CAP_CANCEL_TPM_CMD;
    assert!(Swtpm::connect(fake.spawn().0).is_ok());
}

#[test]
fn an_error_result_names_the_command() {
    let mut fake = Fake::new(|_| Some(ok_response(&[])));
    fake.fail = Some((CMD_INIT, 0x9));
    let (ctrl, log) = fake.spawn();
    let e = Swtpm::connect(ctrl).unwrap_err();
    assert_eq!(e.to_string(), "swtpm failed CMD_INIT: result 0x9");
    assert_eq!(e.errno(), libc::EPROTO);
    assert!(
        !commands(&log).contains(&CMD_SET_LOCALITY),
        "stopped at the failure"
    );
}

#[test]
fn a_silent_swtpm_is_a_timeout() {
    let mut fake = Fake::new(|_| Some(ok_response(&[])));
    fake.silent = true;
    let (ctrl, _log) = fake.spawn();
    let t = Instant::now();
    let e = Swtpm::connect_within(ctrl, Duration::from_millis(300)).unwrap_err();
    assert!(
        matches!(e, TpmError::Timeout("CMD_GET_CAPABILITY", _)),
        "{e}"
    );
    assert_eq!(e.errno(), libc::ETIMEDOUT);
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// A TPM on a fake swtpm whose data channel `f` serves.
fn fake_tpm(
    f: impl FnMut(&[u8]) -> Option<Vec<u8>> + Send + 'static,
) -> (Arc<Tpm>, mpsc::Receiver<(u32, Vec<u8>)>) {
    let (ctrl, log) = Fake::new(f).spawn();
    let tpm = Tpm::new(Swtpm::connect(ctrl).unwrap()).unwrap();
    (tpm, log)
}

#[test]
fn commands_run_on_the_thread_and_the_guest_polls_start() {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (tpm, log) = fake_tpm(move |c| {
        // Hold the command until the test says so: the vCPU must not be waiting meanwhile.
        release_rx.recv().ok()?;
        Some(ok_response(&c[10..]))
    });
    let mut crb = tpm.crb();
    assert_eq!(
        rd(&mut crb, 0x00) & 1,
        1,
        "the established flag swtpm reported"
    );
    ready(&mut crb);
    start(&mut crb, &get_random(2));
    assert_eq!(
        rd(&mut crb, 0x4c),
        1,
        "START stays set while the command runs"
    );
    // A second START while one runs is ignored.
    wr(&mut crb, 0x4c, 1);
    release_tx.send(()).unwrap();
    assert_eq!(finish(&mut crb), ok_response(&[0, 2]));
    // execute() for the VMM goes the same way.
    release_tx.send(()).unwrap();
    assert_eq!(tpm.execute(&get_random(3)).unwrap(), ok_response(&[0, 3]));
    assert!(matches!(
        tpm.execute(&[0x80, 1, 0]),
        Err(TpmError::Command(_))
    ));
    // reset() is CMD_INIT again, then the flag; shutdown() is CMD_SHUTDOWN, once.
    let _ = commands(&log);
    tpm.reset().unwrap();
    assert_eq!(commands(&log), [CMD_INIT, CMD_GET_TPMESTABLISHED]);
    tpm.shutdown().unwrap();
    tpm.shutdown().unwrap();
    assert_eq!(commands(&log), [CMD_SHUTDOWN]);
    // After the end, a command fails at once.
    ready(&mut crb);
    let r = run_command(&mut crb, &get_random(2));
    assert_eq!(r, command::error_response(command::TPM_RC_FAILURE));
}

#[test]
fn cancel_reaches_swtpm_from_the_thread() {
    let (cancelled_tx, cancelled_rx) = mpsc::channel::<()>();
    let (arrived_tx, arrived_rx) = mpsc::channel::<()>();
    let (tpm, log) = fake_tpm(move |_| {
        arrived_tx.send(()).ok()?;
        // Answers only once the cancel arrived on the control channel.
        cancelled_rx.recv().ok()?;
        Some(command::error_response(command::TPM_RC_CANCELED))
    });
    let mut crb = tpm.crb();
    ready(&mut crb);
    let _ = commands(&log);
    start(&mut crb, &get_random(2));
    // The command is with swtpm: the thread waits for its response.
    arrived_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    wr(&mut crb, 0x48, 1);
    assert_eq!(rd(&mut crb, 0x48), 1, "CANCEL reads back");
    // The test waits for the fake to have seen the cancel, then lets it answer.
    let (cmd, _) = log.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(cmd, CMD_CANCEL_TPM_CMD);
    cancelled_tx.send(()).unwrap();
    let r = finish(&mut crb);
    assert_eq!(command::response_code(&r), Some(command::TPM_RC_CANCELED));
    // The cancel's reply was read: the control channel is still in step.
    tpm.reset().unwrap();
    assert_eq!(commands(&log), [CMD_INIT, CMD_GET_TPMESTABLISHED]);
}

#[test]
fn go_idle_during_a_command_and_a_command_after() {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (tpm, _log) = fake_tpm(move |_| {
        release_rx.recv().ok()?;
        Some(ok_response(&[9]))
    });
    let mut crb = tpm.crb();
    ready(&mut crb);
    start(&mut crb, &get_random(1));
    wr(&mut crb, 0x40, 2);
    assert_eq!(rd(&mut crb, 0x44) & 2, 2, "idle");
    release_tx.send(()).unwrap();
    assert_eq!(finish(&mut crb), ok_response(&[9]));
    // Idle: the next START is ignored until cmdReady.
    start(&mut crb, &get_random(1));
    assert_eq!(rd(&mut crb, 0x4c), 0);
    ready(&mut crb);
    release_tx.send(()).unwrap();
    assert_eq!(run_command(&mut crb, &get_random(1)), ok_response(&[9]));
}

#[test]
fn broken_responses_fail_one_command_and_the_channel_recovers() {
    let mut n = 0;
    let (tpm, _log) = fake_tpm(move |_| {
        n += 1;
        Some(match n {
            // Header says 5000 bytes.
            1 => {
                let mut r = ok_response(&[0; 20]);
                r[2..6].copy_from_slice(&5000u32.to_be_bytes());
                r
            }
            // Longer than its header says.
            2 => {
                let mut r = ok_response(&[0; 20]);
                r[2..6].copy_from_slice(&12u32.to_be_bytes());
                r
            }
            // Header says less than a header.
            3 => {
                let mut r = ok_response(&[]);
                r[2..6].copy_from_slice(&4u32.to_be_bytes());
                r
            }
            _ => ok_response(&[4]),
        })
    });
    let mut crb = tpm.crb();
    ready(&mut crb);
    for _ in 0..3 {
        let r = run_command(&mut crb, &get_random(1));
        assert_eq!(r, command::error_response(command::TPM_RC_FAILURE));
        assert_eq!(rd(&mut crb, 0x44) & 1, 0, "not fatal");
    }
    assert_eq!(run_command(&mut crb, &get_random(1)), ok_response(&[4]));
}

#[test]
fn a_back_end_that_is_gone_fails_every_later_command() {
    let (tpm, _log) = fake_tpm(|_| None);
    let mut crb = tpm.crb();
    ready(&mut crb);
    let r = run_command(&mut crb, &get_random(1));
    assert_eq!(r, command::error_response(command::TPM_RC_FAILURE));
    assert_eq!(rd(&mut crb, 0x44) & 1, 1, "tpmSts");
    let r = run_command(&mut crb, &get_random(1));
    assert_eq!(r, command::error_response(command::TPM_RC_FAILURE));
    assert!(tpm.execute(&get_random(1)).is_err());
    assert!(matches!(tpm.reset(), Err(TpmError::Gone)));
    // A new machine's device shows the failure too.
    assert_eq!(rd(&mut tpm.crb(), 0x44) & 1, 1);
}

// ---- the real swtpm ---------------------------------------------------------------------------

/// swtpm running on a temporary state directory; killed (by its PID) when dropped.
struct RealSwtpm {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for RealSwtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start `swtpm socket --tpm2 --ctrl type=unixio,fd=3` on an abstract listener passed as fd 3,
/// connecting first (the connection waits in the backlog), as the VMM does.
fn real_swtpm() -> (RealSwtpm, UnixStream) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::process::CommandExt;
    let swtpm = std::path::Path::new("/usr/bin/swtpm");
    assert!(
        swtpm.exists(),
        "/usr/bin/swtpm is missing: install the Debian package `swtpm`"
    );
    let id = format!(
        "rvmspawn-tpm-test-{}-{:?}",
        std::process::id(),
        Instant::now()
    )
    .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(id.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let ctrl = UnixStream::connect_addr(&addr).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut cmd = std::process::Command::new(swtpm);
    cmd.args([
        "socket",
        "--tpm2",
        "--ctrl",
        "type=unixio,fd=3",
        "--tpmstate",
    ])
    .arg(format!("dir={}", dir.display()));
    // SAFETY: the closure runs in the child before exec and calls only async-signal-safe
    // functions (fcntl, dup2).
    unsafe {
        cmd.pre_exec(move || {
            // The listener may be fd 3 already: then only its close-on-exec flag must go.
            let r = if fd == 3 {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(listener);
    (RealSwtpm { child, dir }, ctrl)
}

#[test]
fn end_to_end_with_the_real_swtpm() {
    use sha2::{Digest, Sha256};
    let (_swtpm, ctrl) = real_swtpm();
    let tpm = Tpm::new(Swtpm::connect(ctrl).unwrap()).unwrap();
    let mut crb = tpm.crb();
    ready(&mut crb);

    let r = run_command(&mut crb, &command::startup_clear());
    assert_eq!(
        command::response_code(&r),
        Some(0),
        "TPM2_Startup: {r:02x?}"
    );
    let r = run_command(&mut crb, &get_random(16));
    assert_eq!(
        command::response_code(&r),
        Some(0),
        "TPM2_GetRandom: {r:02x?}"
    );
    assert_eq!(&r[10..12], &[0, 16]);
    assert_eq!(r.len(), 28, "16 random bytes");
    assert_ne!(&r[12..], &[0u8; 16]);

    assert_eq!(
        pcr_value(&run_command(&mut crb, &pcr_read_sha256(16))),
        [0; 32]
    );
    let digest: [u8; 32] = Sha256::digest(b"rvmspawn").into();
    let r = tpm
        .execute(&command::pcr_extend_sha256(16, &digest))
        .unwrap();
    assert_eq!(
        command::response_code(&r),
        Some(0),
        "TPM2_PCR_Extend: {r:02x?}"
    );
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(digest);
    let expected: [u8; 32] = h.finalize().into();
    assert_eq!(
        pcr_value(&run_command(&mut crb, &pcr_read_sha256(16))),
        expected
    );

    // resetEstablishmentBit: the thread sends CMD_RESET_TPMESTABLISHED for locality 0 (swtpm
    // decides whether locality 0 may) and reads the flag back, before the next command.
    wr(&mut crb, 0x08, 1 << 3);
    let r = run_command(&mut crb, &get_random(4));
    assert_eq!(command::response_code(&r), Some(0));
    assert_eq!(rd(&mut crb, 0x44) & 1, 0, "no tpmSts");

    // A platform reset: PCRs back to zero once the guest starts the TPM again.
    tpm.reset().unwrap();
    let mut crb = tpm.crb();
    ready(&mut crb);
    let r = run_command(&mut crb, &pcr_read_sha256(16));
    assert_eq!(command::response_code(&r), Some(command::TPM_RC_INITIALIZE));
    let r = run_command(&mut crb, &command::startup_clear());
    assert_eq!(command::response_code(&r), Some(0));
    assert_eq!(
        pcr_value(&run_command(&mut crb, &pcr_read_sha256(16))),
        [0; 32]
    );

    tpm.shutdown().unwrap();
    tpm.shutdown().unwrap();
}
