//! The whole VMM path on this machine's own `/dev/kvm`, with hand-made guests of a few bytes:
//! an ELF with a PVH note whose 32-bit code talks to the UART, the i8042 and the ACPI registers.
//! These need no test host and no downloaded kernel, so they run anywhere KVM runs (even on a
//! software hypervisor that cannot boot a real kernel).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const ENTRY: u32 = 0x10_0000;
const CODE_OFFSET: usize = 0x200;

/// `mov dx, port`
fn mov_dx(port: u16) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![0x66, 0xba, lo, hi]
}

/// Print `text` on COM1 with `mov al, c; out dx, al`.
fn print(text: &[u8]) -> Vec<u8> {
    let mut c = mov_dx(0x3f8);
    for &b in text {
        c.extend([0xb0, b, 0xee]);
    }
    c
}

/// ACPI S5 (SLP_TYP 5 | SLP_EN) to the sleep control register, then halt forever.
fn poweroff() -> Vec<u8> {
    let mut c = mov_dx(0x600);
    c.extend([0xb0, 0x34, 0xee]);
    c.extend(halt_forever());
    c
}

fn halt_forever() -> Vec<u8> {
    vec![0xfa, 0xf4, 0xeb, 0xfd] // cli; hlt; jmp hlt
}

/// An ELF64 file with one PT_LOAD holding `code` at 1 MiB and a Xen PVH entry note.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    for v in [4u32, 4, 18] {
        note.extend(v.to_le_bytes());
    }
    note.extend(b"Xen\0");
    note.extend(ENTRY.to_le_bytes());

    let mut f = vec![0u8; CODE_OFFSET];
    f[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    let mut h = Vec::new();
    h.extend(2u16.to_le_bytes()); // ET_EXEC
    h.extend(0x3eu16.to_le_bytes()); // x86_64
    h.extend(1u32.to_le_bytes());
    h.extend(u64::from(ENTRY).to_le_bytes());
    h.extend(64u64.to_le_bytes()); // e_phoff
    h.extend(0u64.to_le_bytes()); // e_shoff
    h.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 2, 64, 0, 0] {
        h.extend(v.to_le_bytes());
    }
    f[16..64].copy_from_slice(&h);
    let phdr = |ty: u32, flags: u32, off: u64, addr: u64, len: u64, align: u64| {
        let mut p = Vec::new();
        p.extend(ty.to_le_bytes());
        p.extend(flags.to_le_bytes());
        for v in [off, addr, addr, len, len, align] {
            p.extend(v.to_le_bytes());
        }
        p
    };
    let load = phdr(
        1,
        5,
        CODE_OFFSET as u64,
        u64::from(ENTRY),
        code.len() as u64,
        0x1000,
    );
    let note_off = 0x180u64;
    let notehdr = phdr(4, 4, note_off, 0, note.len() as u64, 4);
    f[64..120].copy_from_slice(&load);
    f[120..176].copy_from_slice(&notehdr);
    f[note_off as usize..note_off as usize + note.len()].copy_from_slice(&note);
    f.extend(code);
    f
}

fn write_guest(name: &str, code: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rvmspawn-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, pvh_elf(code)).unwrap();
    path
}

/// Every tiny guest runs without a TPM: with swtpm installed, rvmspawn's default would start
/// one and manufacture its state for every run, which these guests never use.
const NO_TPM: &str = "--tpm=no";

/// The tiny guests have no ACPI code: a signal's graceful stop (the power button) would wait
/// out its whole timeout, so they stop at once unless a test says otherwise.
const STOP_AT_ONCE: (&str, &str) = ("RVMSPAWN_STOP_TIMEOUT", "0");

fn rvmspawn(kernel: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rvmspawn"));
    c.env(STOP_AT_ONCE.0, STOP_AT_ONCE.1);
    // The tiny guests talk to COM1, so typed input must go there.
    c.arg("-q")
        .arg("--console-transport=serial")
        .arg("--qemu-mem=64M")
        .arg(NO_TPM)
        .arg(format!("--linux={}", kernel.display()))
        .args(extra);
    c
}

/// Run to completion with `input` on stdin; (stdout, exit code).
fn run(kernel: &Path, extra: &[&str], input: &[u8]) -> (Vec<u8>, Option<i32>) {
    let mut child = rvmspawn(kernel, extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rvmspawn");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        stdout.read_to_end(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rvmspawn did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    (reader.join().unwrap(), status.code())
}

/// Read the child's stdout until `needle` has appeared `times` times; panics if it exits first.
fn read_until(stdout: &mut impl Read, needle: &[u8], times: usize) {
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = [0u8; 256];
    while seen.windows(needle.len()).filter(|w| *w == needle).count() < times {
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "rvmspawn exited before printing {:?} {times} times",
            String::from_utf8_lossy(needle)
        );
        seen.extend(&buf[..n]);
    }
}

/// Wait (at most `limit`) until rvmspawn's console writer (thread `console-out` of `pid`) is
/// blocked writing to a full pipe (its kernel wait channel is `pipe_write`, `anon_pipe_write`
/// on newer kernels).
fn console_writer_blocks(pid: u32, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let blocked = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten().any(|t| {
                    let read =
                        |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
                    read("comm").trim() == "console-out" && read("wchan").contains("pipe_write")
                })
            })
            .unwrap_or(false);
        if blocked {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "the console writer never blocked on the full pipe"
        );
        std::thread::yield_now();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn guest_prints_on_the_uart_and_acpi_poweroff_exits_zero() {
    let mut code = print(b"hello from a tiny guest\n");
    code.extend(poweroff());
    let k = write_guest("hello", &code);
    let (out, rc) = run(&k, &[], b"");
    assert!(
        contains(&out, b"hello from a tiny guest\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(rc, Some(0));
    // With several vCPUs, the others wait for INIT/SIPI and the boot CPU still powers off.
    let (out, rc) = run(&k, &["--qemu-smp=4"], b"");
    assert!(contains(&out, b"hello from a tiny guest\n"));
    assert_eq!(rc, Some(0));
}

#[test]
fn typed_input_reaches_the_guest_in_full_and_in_order() {
    // Echo every byte received on COM1 until 'q', then power off.
    let mut code = mov_dx(0x3fd); // 0: mov dx, LSR
    code.extend([0xec, 0xa8, 0x01, 0x74, 0xfb]); // 4: in al,dx; test al,1; jz 4
    code.extend(mov_dx(0x3f8)); // 9: mov dx, RBR
    code.extend([0xec, 0xee, 0x3c, b'q', 0x75, 0xed]); // in; out; cmp al,'q'; jne 0
    code.extend(poweroff());
    let k = write_guest("echo", &code);
    // Much more than the UART's 64-byte FIFO: the rest must wait for the guest, not vanish.
    let mut input: Vec<u8> = (0..500).map(|i| b'a' + (i % 16) as u8).collect(); // a..p, no 'q'
    input.push(b'q');
    let (out, rc) = run(&k, &[], &input);
    assert!(
        contains(&out, &input),
        "echoed: {}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(rc, Some(0));
}

/// rvmspawn running a guest that prints "waiting" and then echoes every byte it receives on
/// COM1, once it has printed "waiting": (the child, its stdin, its stdout).
fn echoing(name: &str, extra: &[&str]) -> (Child, ChildStdin, ChildStdout) {
    let mut code = print(b"waiting\n");
    code.extend(mov_dx(0x3fd)); // 0: mov dx, LSR
    code.extend([0xec, 0xa8, 0x01, 0x74, 0xfb]); // 4: in al,dx; test al,1; jz 4
    code.extend(mov_dx(0x3f8)); // 9: mov dx, RBR
    code.extend([0xec, 0xee, 0xeb, 0xef]); // in al,dx; out dx,al; jmp 0
    let k = write_guest(name, &code);
    let mut child = rvmspawn(&k, extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    read_until(&mut stdout, b"waiting\n", 1);
    let stdin = child.stdin.take().unwrap();
    (child, stdin, stdout)
}

#[test]
fn ctrl_bracket_three_times_ends_the_vm() {
    let (mut child, mut stdin, mut stdout) = echoing("hang", &[]);
    // Two escapes and a key do not end it: the key reaches the guest, which echoes it...
    stdin.write_all(b"\x1d\x1dx").unwrap();
    read_until(&mut stdout, b"x", 1);
    assert!(
        child.try_wait().unwrap().is_none(),
        "an interrupted escape ended the VM"
    );
    // ...three escapes in a row end it.
    stdin.write_all(b"\x1d\x1d\x1d").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn native_mode_passes_ctrl_bracket_on_and_ends_on_ctrl_a_x() {
    let (mut child, mut stdin, mut stdout) = echoing("native", &["--console=native"]);
    // Ctrl-a a is a literal Ctrl-a; three Ctrl-] are just bytes here: the guest echoes them.
    stdin.write_all(b"\x01a\x1d\x1d\x1d.").unwrap();
    read_until(&mut stdout, b"\x01\x1d\x1d\x1d.", 1);
    assert!(
        child.try_wait().unwrap().is_none(),
        "Ctrl-] ended a native console"
    );
    stdin.write_all(b"\x01x").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn read_only_mode_does_not_read_the_terminal() {
    // Print "waiting", poll COM1's LSR 200000 times: "got" if a byte came, else "none".
    let mut code = print(b"waiting\n");
    let mut none = print(b"none\n");
    none.extend(poweroff());
    let mut got = print(b"got\n");
    got.extend(poweroff());
    code.extend(mov_dx(0x3fd));
    code.push(0xb9); // mov ecx, 200000
    code.extend(200_000u32.to_le_bytes());
    // 0: in al,dx; test al,1; jnz GOT; sub ecx,1; jnz 0
    code.extend([0xec, 0xa8, 0x01, 0x75, (5 + none.len()) as u8]);
    code.extend([0x83, 0xe9, 0x01, 0x75, 0xf6]);
    code.extend(none);
    code.extend(got);
    let k = write_guest("read-only", &code);
    let mut child = rvmspawn(&k, &["--console=read-only"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    read_until(&mut stdout, b"waiting\n", 1);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"typed\x1d\x1d\x1d").unwrap();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"none\n", "{}", String::from_utf8_lossy(&rest));
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_guest_probing_every_port_and_using_string_io_cannot_hurt_the_vmm() {
    // Read and write back every I/O port (0..=0xffff), byte-wide.
    let mut code = vec![0x31, 0xd2]; // xor edx, edx
    code.extend([0xec, 0xee, 0x66, 0x42, 0x75, 0xfa]); // in; out; inc dx; jnz
    // rep outsb of 3 and of 2 bytes to COM1 from the string at the end of the code.
    let string_at = ENTRY as usize + 64 * 4; // placed below
    for (len, skip) in [(3u32, 0u32), (2, 3)] {
        code.push(0xbe); // mov esi, imm32
        code.extend((string_at as u32 + skip).to_le_bytes());
        code.push(0xb9); // mov ecx, imm32
        code.extend(len.to_le_bytes());
        code.extend(mov_dx(0x3f8));
        code.extend([0xfc, 0xf3, 0x6e]); // cld; rep outsb
    }
    code.extend(print(b"\nsurvived\n"));
    code.extend(poweroff());
    assert!(code.len() <= 64 * 4);
    code.resize(64 * 4, 0x90);
    code.extend(b"ABCXY");
    let k = write_guest("probe", &code);
    let (out, rc) = run(&k, &[], b"");
    assert!(
        contains(&out, b"ABCXY"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        contains(&out, b"survived\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(rc, Some(0));
}

#[test]
fn guest_reset_restarts_the_machine_and_sigterm_ends_it() {
    let mut code = print(b"boot\n");
    code.extend(mov_dx(0x64));
    code.extend([0xb0, 0xfe, 0xee]); // i8042: pulse the reset line
    code.extend(halt_forever());
    let k = write_guest("reset", &code);
    let mut child = rvmspawn(&k, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Three boots: the guest's reset request restarted the machine twice.
    read_until(&mut child.stdout.take().unwrap(), b"boot\n", 3);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
}

#[test]
fn sigterm_presses_the_power_button_and_waits_for_the_guest_then_stops_it() {
    // A guest with no ACPI code never answers the button: the stop waits out the timeout.
    let k = write_guest("noacpi", &[print(b"up\n"), halt_forever()].concat());
    let mut child = rvmspawn(&k, &[])
        .env("RVMSPAWN_STOP_TIMEOUT", "1.5")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    read_until(&mut child.stdout.take().unwrap(), b"up\n", 1);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (rc, took) = wait_bounded(&mut child, Duration::from_secs(20));
    eprintln!("SIGTERM with a 1.5 s graceful stop, guest without ACPI: {took:?}");
    assert_eq!(
        rc,
        Some(0),
        "a stop after the timeout is still a clean stop"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "did not wait: {took:?}"
    );

    // A second signal during the wait stops it at once; SIGRTMIN+4 begins a graceful stop too.
    let mut child = rvmspawn(&k, &[])
        .env("RVMSPAWN_STOP_TIMEOUT", "60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    read_until(&mut child.stdout.take().unwrap(), b"up\n", 1);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGRTMIN() + 4) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGRTMIN+4 is a graceful stop: the VM waits for the guest"
    );
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (rc, took) = wait_bounded(&mut child, Duration::from_secs(20));
    assert_eq!(rc, Some(0));
    assert!(
        took < Duration::from_secs(10),
        "the second signal: {took:?}"
    );
}

/// Wait (at most `bound`) for `child` to exit; its status and how long that took.
fn wait_bounded(child: &mut std::process::Child, bound: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s.code(), start.elapsed());
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            panic!("rvmspawn did not exit within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The names of `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_guest_spinning_with_interrupts_disabled_stops_on_sigterm_at_once() {
    // Both vCPUs busy in the guest: the boot CPU spins with interrupts off, the other waits
    // for a SIPI that never comes (inside KVM_RUN too).
    let mut code = print(b"spinning\n");
    code.extend([0xfa, 0xeb, 0xfe]); // cli; jmp $
    let k = write_guest("spin", &code);
    let mut child = rvmspawn(&k, &["--qemu-smp=2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    read_until(&mut stdout, b"spinning\n", 1);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Generous against a loaded or emulated host; the figure itself is printed.
    let (rc, took) = wait_bounded(&mut child, Duration::from_secs(10));
    eprintln!("stop time, spinning guest with interrupts disabled: {took:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(rc, Some(0), "{stderr}");
    // Every vCPU came out of the guest: none was left behind after the bounded wait.
    assert!(!stderr.contains("did not stop"), "{stderr}");
}

/// A new pseudo-terminal: (controller, terminal), both owned.
fn pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain calls on descriptors we own; ptsname's result is copied at once.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0);
        let m = OwnedFd::from_raw_fd(m);
        assert_eq!(libc::grantpt(m.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(m.as_raw_fd()), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(m.as_raw_fd())).to_owned();
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(s >= 0);
        (m, OwnedFd::from_raw_fd(s))
    }
}

fn local_modes(fd: &std::os::fd::OwnedFd) -> libc::tcflag_t {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a valid termios to write into.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t.c_lflag
}

#[test]
fn a_second_sigterm_while_stopping_ends_the_run_at_once_with_143() {
    // The stop is held up: the guest floods the console and nobody reads it, so the stop
    // waits (boundedly, 5 s) for the console's output to drain.
    let mut code = mov_dx(0x3f8);
    code.extend([0xb0, b'x', 0xee, 0xeb, 0xfb]); // 4: mov al,'x'; out dx,al; jmp 4
    let k = write_guest("flood2", &code);
    let (_controller, terminal) = pty();
    let cooked = local_modes(&terminal);
    assert_ne!(cooked & libc::ICANON, 0);
    // Killed if an assertion fails: a flooding guest left running eats a core.
    let mut child = KillOnDrop(
        rvmspawn(&k, &[])
            .stdin(Stdio::from(terminal.try_clone().unwrap()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    read_until(&mut stdout, b"x", 1);
    assert_eq!(
        local_modes(&terminal) & libc::ICANON,
        0,
        "raw while it runs"
    );
    // The stop is held up only once rvmspawn's writer waits for room in the full pipe: before
    // that, what the guest printed drains at once and the run may end before a second signal
    // can be sent.
    let pid = child.0.id();
    console_writer_blocks(pid, Duration::from_secs(10));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    // The first signal was taken and the stop began once the thread that watches for a
    // second one exists.
    let t0 = Instant::now();
    while !thread_names(pid).iter().any(|n| n == "stop-signals") {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "rvmspawn ended before a second signal could be sent"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the stop never began"
        );
        std::thread::yield_now();
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let (rc, took) = wait_bounded(&mut child.0, Duration::from_secs(10));
    eprintln!("exit after a second SIGTERM: {took:?}");
    drop(stdout);
    assert_eq!(rc, Some(128 + libc::SIGTERM), "as a shell reports SIGTERM");
    // Well under the 5 s the held-up stop would take.
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(local_modes(&terminal), cooked, "the terminal is restored");
}

#[test]
fn status_lines_on_a_raw_terminal_end_in_cr_lf() {
    // The userspace vsock device's notice is printed once the terminal is raw; it needs a host
    // without vhost-vsock.
    if Path::new("/dev/vhost-vsock").exists() {
        eprintln!("note: /dev/vhost-vsock exists; no status line in raw mode to check here");
        return;
    }
    let mut code = print(b"up\n");
    code.extend(poweroff());
    let k = write_guest("rawstatus", &code);
    let (_controller, terminal) = pty();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rvmspawn"));
    c.env(STOP_AT_ONCE.0, STOP_AT_ONCE.1);
    c.arg("--qemu-mem=64M")
        .arg(NO_TPM)
        .arg(format!("--linux={}", k.display()))
        .args(["-M", &format!("rawstatus{}", std::process::id() % 100_000)]);
    let out = c
        .stdin(Stdio::from(terminal.try_clone().unwrap()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let at = stderr
        .find("No /dev/vhost-vsock")
        .unwrap_or_else(|| panic!("no vsock notice: {stderr:?}"));
    // From the raw switch on, every line ends in \r\n (no staircase).
    let raw_part = &stderr[at..];
    assert!(raw_part.ends_with("\r\n"), "{raw_part:?}");
    assert!(
        !raw_part.replace("\r\n", "").contains('\n'),
        "a bare \\n on a raw terminal: {raw_part:?}"
    );
    // Before it, in cooked mode, lines end in \n alone.
    assert!(!stderr[..at].contains('\r'), "{stderr:?}");
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused_clearly() {
    let dir = std::env::temp_dir().join(format!("rvmspawn-notkernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notes.txt");
    std::fs::write(&path, "just some text, certainly not a kernel\n".repeat(40)).unwrap();
    let out = rvmspawn(&path, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(libc::ENOEXEC), "{stderr}");
    assert!(stderr.contains("is not a Linux kernel"), "{stderr}");
    assert!(stderr.contains("notes.txt"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    // Refused before any helper starts: with a TPM asked for, its state directory (made and
    // manufactured when swtpm starts) never appears.
    let state = dir.join("tpmstate");
    let state_arg = format!("--tpm-state={}", state.display());
    let out = rvmspawn(&path, &["--tpm=yes", &state_arg])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(libc::ENOEXEC), "{stderr}");
    assert!(stderr.contains("is not a Linux kernel"), "{stderr}");
    assert!(
        !state.exists(),
        "the TPM was set up for a file that is not a kernel"
    );
    // A truncated ELF header is just as clearly refused, not a panic.
    std::fs::write(&path, b"\x7fELF\x02\x01\x01").unwrap();
    let out = rvmspawn(&path, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(libc::ENOEXEC), "{stderr}");
    assert!(stderr.contains("Failed to load kernel"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An unprivileged user for the run-directory tests: its own UID (no account needed), its
/// `/tmp/rvmspawn-UID` removed before and after.
struct TestUser {
    uid: u32,
}

impl TestUser {
    /// The user for `offset` 0, 1 or 2 (3 is left for the other user of a test). `None` (with a
    /// note) where the test cannot run: it needs root to switch users, setpriv,
    /// /dev/kvm, and a vhost-vsock the user cannot open (so that rvmspawn's own vsock device,
    /// which uses the run directory, is the one that runs).
    fn new(offset: u32) -> Option<TestUser> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let vhost_for_all = std::fs::metadata("/dev/vhost-vsock")
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::mode(&m) & 0o006 != 0);
        if !root
            || !Path::new("/usr/bin/setpriv").exists()
            || !Path::new("/dev/kvm").exists()
            || vhost_for_all
        {
            eprintln!(
                "note: needs root, setpriv, /dev/kvm and no world-usable /dev/vhost-vsock; \
                 the unprivileged run directory is not tested here"
            );
            return None;
        }
        let user = TestUser {
            uid: 3_000_000 + (std::process::id() % 100_000) * 4 + offset,
        };
        let _ = std::fs::remove_dir_all(user.base());
        let _ = std::fs::remove_dir_all(user.victim());
        Some(user)
    }

    /// `/tmp/rvmspawn-UID`, where this user's runs keep their directories.
    fn base(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/rvmspawn-{}", self.uid))
    }

    /// A directory of this user's outside the base, for links to point at.
    fn victim(&self) -> PathBuf {
        std::env::temp_dir().join(format!("rvmspawn-victim-{}", self.uid))
    }

    fn chown(&self, p: &Path, uid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
    }

    /// rvmspawn as this user, no supplementary groups, no `$XDG_RUNTIME_DIR`, with /dev/kvm
    /// opened here and passed as the `kvm` fd; vsock on.
    fn rvmspawn(&self, kernel: &Path, name: &str) -> Command {
        let script = "u=$1; shift; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=kvm \
                      exec setpriv --reuid=\"$u\" --regid=\"$u\" --clear-groups \"$@\" 3<>/dev/kvm";
        let mut c = Command::new("/bin/sh");
        c.env(STOP_AT_ONCE.0, STOP_AT_ONCE.1);
        c.args(["-c", script, "sh"])
            .arg(self.uid.to_string())
            .arg(env!("CARGO_BIN_EXE_rvmspawn"))
            .args([
                "-q",
                "--qemu-mem=64M",
                "--qemu-vsock=yes",
                NO_TPM,
                "-M",
                name,
            ])
            .arg(format!("--linux={}", kernel.display()))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::null());
        c
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.base());
        let _ = std::fs::remove_dir_all(self.victim());
    }
}

/// A guest that prints "up" and powers off, or halts with `stay`.
fn up_guest(name: &str, stay: bool) -> PathBuf {
    let mut code = print(b"up\n");
    code.extend(if stay { halt_forever() } else { poweroff() });
    write_guest(name, &code)
}

#[test]
fn an_unprivileged_run_gets_a_private_run_directory_and_removes_it() {
    let Some(user) = TestUser::new(0) else {
        return;
    };
    let k = up_guest("rundir-ok", true);
    // Killed if an assertion fails while it runs.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Running(
        user.rvmspawn(&k, "rundir-ok")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = child.0.stdout.take().unwrap();
    read_until(&mut out, b"up\n", 1);
    let dir = user.base().join("rundir-ok");
    for p in [user.base(), dir.clone()] {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.is_dir(), "{}", p.display());
        assert_eq!(
            (m.uid(), m.mode() & 0o7777),
            (user.uid, 0o700),
            "{}",
            p.display()
        );
    }
    assert!(dir.join("vsock").exists(), "rvmspawn's vsock socket");
    // SAFETY: sending a signal to our own child process (sh exec'd setpriv exec'd rvmspawn).
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!dir.exists(), "the run directory is removed at the end");
}

#[test]
fn an_unprivileged_run_refuses_a_planted_link_and_touches_nothing() {
    let Some(user) = TestUser::new(1) else {
        return;
    };
    let k = up_guest("rundir-planted", false);
    let base = user.base();
    std::fs::create_dir(&base).unwrap();
    user.chown(&base, user.uid);
    // The machine's directory is a link to another directory of the user's.
    let victim = user.victim();
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"keep").unwrap();
    user.chown(&victim, user.uid);
    user.chown(&victim.join("precious"), user.uid);
    let link = base.join("rundir-planted");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    user.chown(&link, user.uid);
    let out = user.rvmspawn(&k, "rundir-planted").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(libc::EEXIST), "{err}");
    assert!(err.contains(&format!("{} ", link.display())), "{err}");
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
}

#[test]
fn an_unprivileged_run_refuses_a_base_directory_of_another_user() {
    use std::os::unix::fs::PermissionsExt;
    let Some(user) = TestUser::new(2) else {
        return;
    };
    let k = up_guest("rundir-foreign", false);
    let base = user.base();
    // The base belongs to someone else, who made the machine's directory writable for all and
    // left something in it.
    let other = user.uid + 1;
    std::fs::create_dir(&base).unwrap();
    user.chown(&base, other);
    let theirs = base.join("rundir-foreign");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(theirs.join("planted"), b"theirs").unwrap();
    user.chown(&theirs, other);
    user.chown(&theirs.join("planted"), other);
    let out = user.rvmspawn(&k, "rundir-foreign").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(libc::EACCES), "{err}");
    assert!(err.contains(&format!("{} ", base.display())), "{err}");
    assert!(err.contains(&format!("owned by UID {other}")), "{err}");
    assert!(theirs.join("planted").exists());
    assert!(!theirs.join("vsock").exists());
}

#[test]
fn a_terminal_that_stops_reading_cannot_keep_the_vmm_from_stopping() {
    // Print 'x' forever.
    let mut code = mov_dx(0x3f8);
    code.extend([0xb0, b'x', 0xee, 0xeb, 0xfb]); // 4: mov al,'x'; out dx,al; jmp 4
    let k = write_guest("flood", &code);
    let mut child = rvmspawn(&k, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little, then stop reading until the pipe is full (rvmspawn's console writer is
    // then stuck in write(2), and its buffer fills behind it).
    let mut stdout = child.stdout.take().unwrap();
    read_until(&mut stdout, b"x", 1);
    wait_until_full(&stdout);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "rvmspawn hung with a full stdout"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdout);
    assert_eq!(status.code(), Some(0));
}

/// Wait (at most 30 s) until the pipe `stdout` reads from is nearly full: three quarters of its
/// capacity queued (it counts in page-sized slots that small writes leave partly empty, so
/// "full" is a little less than its size); rvmspawn's writes then block.
fn wait_until_full(stdout: &std::process::ChildStdout) {
    use std::os::fd::AsRawFd;
    let fd = stdout.as_raw_fd();
    // SAFETY: F_GETPIPE_SZ on our own pipe descriptor.
    let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    assert!(size > 0, "F_GETPIPE_SZ");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, into `queued`.
        assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) }, 0);
        if queued >= size / 4 * 3 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pipe never filled: {queued} of {size}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Start a tiny guest that prints "up" and halts, with `extra` options and `-M name`; returns
/// the child once the guest runs, and what rvmspawn printed on stderr by then.
fn running_guest(name: &str, extra: &[&str]) -> std::process::Child {
    let mut code = print(b"up\n");
    code.extend(halt_forever());
    let k = write_guest(name, &code);
    let mut args = vec!["--qemu-vsock=no", "-M", name];
    args.extend(extra);
    let mut child = rvmspawn(&k, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    read_until(&mut out, b"up\n", 1);
    // Keep the pipe open (the console thread would otherwise see EPIPE).
    std::mem::forget(out);
    child
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether TAP devices can be created here (root with /dev/net/tun).
fn can_create_taps() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/net/tun").exists() {
        eprintln!("note: not root or no /dev/net/tun; TAP lifecycle not tested here");
        return false;
    }
    true
}

#[test]
fn the_tap_exists_while_the_vm_runs_and_vanishes_on_sigkill() {
    if !can_create_taps() {
        return;
    }
    let name = format!("tap{}", std::process::id() % 100_000);
    let tap = format!("vt-{name}");
    assert!(!link_exists(&tap));
    let mut child = running_guest(&name, &["-n"]);
    assert!(link_exists(&tap), "{tap} while the VM runs");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!link_exists(&tap), "{tap} after SIGKILL");
    // SIGTERM: the same, with a clean exit.
    let mut child = running_guest(&name, &["-n"]);
    assert!(link_exists(&tap));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!link_exists(&tap), "{tap} after SIGTERM");
}

#[test]
fn a_bad_network_mac_variable_is_refused_naming_it() {
    let k = write_guest("badmac", &poweroff());
    let out = rvmspawn(&k, &["-n"])
        .env("SYSTEMD_VMSPAWN_NETWORK_MAC", "02:00:00:00:00")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(libc::EINVAL), "{stderr}");
    assert!(
        stderr.contains("$SYSTEMD_VMSPAWN_NETWORK_MAC") && stderr.contains("'02:00:00:00:00'"),
        "{stderr}"
    );
}

#[test]
fn passt_runs_with_the_vm_and_goes_when_rvmspawn_is_killed() {
    if !Path::new("/usr/bin/passt").exists() {
        eprintln!("note: no /usr/bin/passt; passt lifecycle not tested here");
        return;
    }
    let name = format!("passt{}", std::process::id() % 100_000);
    let mut child = running_guest(&name, &["--network-user-mode"]);
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap();
    let passt: i32 = children
        .split_whitespace()
        .find(|pid| {
            // passt re-executes itself as passt.avx2 where the CPU has AVX2.
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("passt"))
        })
        .and_then(|p| p.parse().ok())
        .expect("passt is rvmspawn's child");
    child.kill().unwrap();
    child.wait().unwrap();
    // passt notices its socket closing and exits; bounded wait for that.
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
    };
    while alive(passt) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(passt), "passt {passt} outlived rvmspawn");
}

/// Every thread of process `pid`: (thread ID, name, `Seccomp:` mode, `Seccomp_filters:` count).
/// A thread that ends while being read is left out.
fn threads_seccomp(pid: u32) -> Vec<(u32, String, String, u32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads = Vec::new();
    for entry in dir.flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let tid = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        let filters = field("Seccomp_filters:").parse().unwrap_or(0);
        threads.push((tid, field("Name:"), field("Seccomp:"), filters));
    }
    threads
}

/// Whether a thread has the seccomp filters of its kind: the main thread its list and the one
/// that answers clone3 with ENOSYS; every other thread its list and the one that answers
/// openat with EACCES, on top of those of the thread that started it (a vCPU thread: the main
/// thread's two); the threads started before the main thread's filters (the TPM's thread among
/// them) have only their own two. KVM's worker threads (`kvm-nx-lpage-recovery`, and vhost's on kernels from 6.4)
/// belong to the process but run only kernel code.
fn has_its_filters(pid: u32, tid: u32, name: &str, filters: u32) -> bool {
    match name {
        _ if tid == pid => filters == 2,
        n if n.starts_with("vcpu") => filters == 4,
        "console-out" | "helper-stderr" | "vsock-notify" | "tpm" => filters == 2,
        n => n.starts_with("kvm-") || n.starts_with("vhost-"),
    }
}

/// Check the threads of `pid` until one look finds each with the filters of its kind and every
/// name in `want`; every look must find every thread confined (`Seccomp: 2`).
fn assert_threads_confined(pid: u32, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let threads = threads_seccomp(pid);
        for (tid, name, mode, _) in &threads {
            assert_eq!(
                mode, "2",
                "thread {tid} ({name}) runs without seccomp: {threads:?}"
            );
        }
        // A thread just started has its parent's filters until its first action adds its own
        // (and its parent's name until it names itself): look again.
        let settled = threads
            .iter()
            .all(|(tid, name, _, n)| has_its_filters(pid, *tid, name, *n));
        let complete = want
            .iter()
            .all(|w| threads.iter().any(|(_, name, _, _)| name == w));
        if settled && complete {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "threads without the filters of their kind, or {want:?} missing: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child killed (and reaped) when dropped, so a failing assertion leaves no VM running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_thread_runs_under_its_seccomp_filter_also_after_a_reboot() {
    // Each boot prints, waits for a byte on COM1, then resets: the second machine is built anew,
    // with new vCPU threads, by the main thread under its filter.
    let mut code = print(b"boot\n");
    code.extend(mov_dx(0x3fd)); // mov dx, LSR
    code.extend([0xec, 0xa8, 0x01, 0x74, 0xfb]); // in al,dx; test al,1; jz back to in
    code.extend(mov_dx(0x64));
    code.extend([0xb0, 0xfe, 0xee]); // i8042: pulse the reset line
    code.extend(halt_forever());
    let k = write_guest("seccomp-reboot", &code);
    // With a TPM: its thread is confined too, and the main thread resets the TPM at the reboot
    // and shuts it down at the end under its own filter (a forbidden call would end the run by
    // SIGSYS, not with 0).
    let mut child = KillOnDrop(
        rvmspawn(&k, &["--qemu-smp=2", "--tpm=yes"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let mut out = child.0.stdout.take().unwrap();
    let mut input = child.0.stdin.take().unwrap();
    read_until(&mut out, b"boot\n", 1);
    assert_threads_confined(pid, &["vcpu0", "vcpu1", "console-out", "tpm"]);
    input.write_all(b"r").unwrap();
    read_until(&mut out, b"boot\n", 1);
    assert_threads_confined(pid, &["vcpu0", "vcpu1", "console-out", "tpm"]);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
    // A helper's stderr thread, started before the main thread's filter.
    if Path::new("/usr/bin/passt").exists() {
        let name = format!("sc{}", std::process::id() % 100_000);
        let child = KillOnDrop(running_guest(&name, &["--network-user-mode"]));
        assert_threads_confined(child.0.id(), &["vcpu0", "console-out", "helper-stderr"]);
    }
}

/// The build with test hooks (`--features test-hooks`), beside the release binary.
fn test_hooks_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_rvmspawn"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("test-hooks/rvmspawn");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --profile test-hooks -p rvmspawn --features test-hooks` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Run `bin` on a guest that prints and powers off, without core dumps, with `env`.
fn run_hooked(bin: &Path, k: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new("sh");
    c.env(STOP_AT_ONCE.0, STOP_AT_ONCE.1);
    c.arg("-c")
        .arg("ulimit -c 0; exec \"$@\"")
        .arg("sh")
        .arg(bin)
        .args(["-q", "--qemu-mem=64M", "--qemu-vsock=no", NO_TPM])
        .arg(format!("--linux={}", k.display()))
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    c.output().unwrap()
}

#[test]
fn a_forbidden_system_call_ends_the_run_by_sigsys_with_one_clear_line() {
    use std::os::unix::process::ExitStatusExt;
    let mut code = print(b"up\n");
    code.extend(poweroff());
    let k = write_guest("seccomp-violation", &code);
    let hooked = test_hooks_binary();
    let violate = [("RVMSPAWN_TEST_SECCOMP_VIOLATION", "vcpu")];
    let out = run_hooked(&hooked, &k, &violate);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{:?}: {stderr}",
        out.status
    );
    let line = format!(
        "rvmspawn: seccomp: thread vcpu0 (vcpu) made the forbidden system call {} (mount); ending by SIGSYS",
        libc::SYS_mount
    );
    assert!(stderr.contains(&line), "{stderr}");
    // In log mode the call is let through (and logged by the kernel): the guest powers off.
    let log = [violate[0], ("RVMSPAWN_SECCOMP", "log")];
    let out = run_hooked(&hooked, &k, &log);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(contains(&out.stdout, b"up\n"));
    // The release binary has no such hook.
    let out = run_hooked(Path::new(env!("CARGO_BIN_EXE_rvmspawn")), &k, &violate);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_bad_seccomp_mode_is_refused_naming_the_variable() {
    let k = write_guest("seccomp-mode", &poweroff());
    for bad in ["off", "trap"] {
        let out = rvmspawn(&k, &[])
            .env("RVMSPAWN_SECCOMP", bad)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(libc::EINVAL), "{stderr}");
        assert!(
            stderr.contains(&format!("RVMSPAWN_SECCOMP={bad}:")),
            "{stderr}"
        );
    }
}

#[test]
fn a_forbidden_system_call_leaves_the_terminal_as_it_was() {
    // script(1) gives rvmspawn a terminal, which it makes raw; the shell then shows whether the
    // SIGSYS handler put canonical mode and echo back.
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("note: no /usr/bin/script (bsdutils); terminal restore not tested here");
        return;
    }
    let mut code = print(b"up\n");
    code.extend(poweroff());
    let k = write_guest("seccomp-tty", &code);
    let cmd = format!(
        "ulimit -c 0; RVMSPAWN_TEST_SECCOMP_VIOLATION=vcpu '{}' -q --qemu-mem=64M --qemu-vsock=no {NO_TPM} --linux='{}'; echo rc=$?; stty -a",
        test_hooks_binary().display(),
        k.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("made the forbidden system call"), "{text}");
    assert!(
        text.contains(&format!("rc={}", 128 + libc::SIGSYS)),
        "{text}"
    );
    let flags: Vec<&str> = text.split_whitespace().collect();
    assert!(
        flags.contains(&"icanon") && flags.contains(&"echo"),
        "the terminal stayed raw: {text}"
    );
}

#[test]
fn a_direct_boot_has_no_pit() {
    // Program the PIT's counter 0 (lobyte/hibyte, mode 2, count 0x12), latch its status with a
    // read-back command and print the status byte between two markers. An 8254 answers
    // 0x34 (plus its OUTPUT and NULL COUNT bits); a port nothing serves reads all ones.
    let mut code = mov_dx(0x43);
    code.extend([0xb0, 0x34, 0xee]); // mode: counter 0, lobyte/hibyte, mode 2
    code.extend(mov_dx(0x40));
    code.extend([0xb0, 0x12, 0xee, 0xb0, 0x00, 0xee]); // count 0x0012
    code.extend(mov_dx(0x43));
    code.extend([0xb0, 0xe2, 0xee]); // read-back: status only, counter 0
    code.extend(print(b"PIT status: "));
    code.extend(mov_dx(0x40));
    code.push(0xec); // in al, dx
    code.extend(mov_dx(0x3f8));
    code.push(0xee); // out dx, al
    code.extend(print(b"\n"));
    code.extend(poweroff());
    let k = write_guest("pit", &code);
    let (out, rc) = run(&k, &[], b"");
    assert_eq!(rc, Some(0));
    assert!(
        contains(&out, b"PIT status: \xff\n"),
        "the direct boot's guest has a PIT: {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// The environment variable that makes [`the_teardown_probe`] run (in its own process).
const TEARDOWN_PROBE: &str = "RVMSPAWN_TEST_TEARDOWN_PROBE";

#[test]
fn the_vm_is_destroyed_after_rvmspawn_has_exited() {
    // The probe makes its process a subreaper, which must not take the children of the other
    // tests of this binary: it runs alone, in a process of its own.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_teardown_probe",
            "--include-ignored",
            "--nocapture",
        ])
        .env(TEARDOWN_PROBE, "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the probe did not run: {text}");
}

/// Run by [`the_vm_is_destroyed_after_rvmspawn_has_exited`] in a process of its own: as a
/// subreaper, this process inherits whatever rvmspawn leaves running when it exits. The VM's
/// destruction must be such a process (a child that outlives rvmspawn), which must then end on
/// its own; and what the caller waits for (the output's end of file, the TAP device) must be
/// released before rvmspawn's exit.
#[test]
#[ignore = "run by the_vm_is_destroyed_after_rvmspawn_has_exited, in a process of its own"]
fn the_teardown_probe() {
    if std::env::var_os(TEARDOWN_PROBE).is_none() {
        return;
    }
    // SAFETY: a prctl with no pointer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    let name = format!("td{}", std::process::id() % 100_000);
    let tap = format!("vt-{name}");
    let taps = can_create_taps();
    let mut code = print(b"hello\n");
    code.extend(poweroff());
    let k = write_guest("teardown", &code);
    let mut args = vec!["--qemu-vsock=no", "-M", name.as_str()];
    if taps {
        args.push("-n");
    }
    let (out, rc) = run(&k, &args, b"");
    assert_eq!(rc, Some(0));
    assert!(contains(&out, b"hello\n"));
    if taps {
        assert!(!link_exists(&tap), "{tap} is left when rvmspawn has exited");
    }
    // rvmspawn is reaped (by `run`); the VM's teardown is a process it left to us.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = 0;
    let pid = loop {
        // SAFETY: waits for any child of this process, writing its status into `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid != 0 {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the teardown child did not end within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        pid > 0,
        "no child outlived rvmspawn: the VM was destroyed before its exit ({})",
        std::io::Error::last_os_error()
    );
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

/// rvmspawn on a pseudo-terminal (stdin and stdout; `TERM=xterm`) with `extra`, a guest that
/// prints `up` and powers off; the terminal answers an OSC 11 query with a white background
/// when `answer`. Everything rvmspawn wrote to the terminal.
fn tinted_run(extra: &[&str], env: &[(&str, &str)], answer: bool) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut code = print(b"up\n");
    code.extend(poweroff());
    let k = write_guest("tint", &code);
    let (controller, terminal) = pty();
    let mut c = rvmspawn(&k, extra);
    c.env("TERM", "xterm").env_remove("SYSTEMD_TINT_BACKGROUND");
    for (key, value) in env {
        c.env(key, value);
    }
    let mut child = KillOnDrop(
        c.stdin(Stdio::from(terminal.try_clone().unwrap()))
            .stdout(Stdio::from(terminal.try_clone().unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    drop(terminal);
    let mut seen = Vec::new();
    let mut answered = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut p = libc::pollfd {
            fd: controller.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut p, 1, 100) };
        if ready > 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a local buffer of that size.
            let n =
                unsafe { libc::read(controller.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break; // EIO: every copy of the terminal is closed.
            }
            seen.extend_from_slice(&buf[..n as usize]);
        }
        if answer && !answered && contains(&seen, b"\x1b]11;?") {
            let reply = b"\x1b]11;rgb:ffff/ffff/ffff\x1b\\";
            // SAFETY: writing a buffer that lives for the call.
            unsafe { libc::write(controller.as_raw_fd(), reply.as_ptr().cast(), reply.len()) };
            answered = true;
        }
        if child.0.try_wait().unwrap().is_some() && ready <= 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no end: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
    assert!(
        contains(&seen, b"up"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    seen
}

#[test]
fn the_default_tint_is_the_terminals_background_turned_green() {
    // vmspawn's default: the terminal is asked for its background (white here) and the console
    // gets it tinted green (hue 130, saturation 25 on a light background), reset at the end.
    let seen = tinted_run(&[], &[], true);
    let text = String::from_utf8_lossy(&seen);
    let tint = text.find("\x1b[48;2;191;255;201m").expect(&text);
    assert!(tint < text.find("up").unwrap(), "{text:?}");
    assert!(
        text.trim_end_matches(['\r', '\n'])
            .ends_with("\x1b[0m\x1b[K"),
        "{text:?}"
    );
    // A terminal that does not answer gets no tint (after a third of a second).
    let text = String::from_utf8_lossy(&tinted_run(&[], &[], false)).into_owned();
    assert!(text.contains("\x1b]11;?"), "{text:?}");
    assert!(!text.contains("48;2;"), "{text:?}");
    // $SYSTEMD_TINT_BACKGROUND=0 and --background= (empty): no query, no tint.
    for (extra, env) in [
        (&[][..], &[("SYSTEMD_TINT_BACKGROUND", "0")][..]),
        (&["--background="][..], &[][..]),
    ] {
        let text = String::from_utf8_lossy(&tinted_run(extra, env, true)).into_owned();
        assert!(!text.contains("\x1b]11;?"), "{extra:?} {env:?}: {text:?}");
        assert!(!text.contains("48;2;"), "{extra:?} {env:?}: {text:?}");
    }
    // An explicit colour is used as it is, without asking.
    let text =
        String::from_utf8_lossy(&tinted_run(&["--background=48;5;22"], &[], true)).into_owned();
    assert!(!text.contains("\x1b]11;?"), "{text:?}");
    assert!(text.contains("\x1b[48;5;22m"), "{text:?}");
}
