//! rvmspawn-guest: a test program for the guest initramfs of rvmspawn's integration tests
//! (`scripts/initramfs/guest-init` runs it; `scripts/assets.sh` builds it static). It prints
//! `RVMSPAWN-KEY=value` lines on stdout, as the rest of the guest's `/init` does, and exits 0
//! when what it was asked to do worked, 1 when not (the line says why), 2 on a usage error.
//!
//! ```text
//! rvmspawn-guest notify [--exit-status N] [--no-ready] [--message TEXT]... [--one-connection]
//!                       [--no-newline] [--address ADDR] [--entries DIR]
//! rvmspawn-guest cid
//! rvmspawn-guest credential ID [--entries DIR]
//! rvmspawn-guest stream-send (--cid C --port P | --unix PATH --port P | --tcp IP:PORT)
//!                            --bytes N [--seed S] [--timeout SECS]
//! rvmspawn-guest stream-recv (--port P | --unix PATH | --tcp-listen IP:PORT) [--bytes N]
//!                            [--timeout SECS]
//! rvmspawn-guest stream-hash --bytes N [--seed S]
//! rvmspawn-guest raw-frame --if IFACE --bytes N [--to MAC]
//! rvmspawn-guest zero-out --device DEV --bytes N
//! rvmspawn-guest get-random N [--device DEV]
//! rvmspawn-guest pcr-extend PCR HEXDIGEST [--device DEV]
//! rvmspawn-guest pcr-read PCR [--device DEV]
//! rvmspawn-guest nv-write INDEX TEXT [--device DEV]
//! rvmspawn-guest nv-read INDEX [--device DEV]
//! rvmspawn-guest power-button [--timeout SECS]
//! rvmspawn-guest find-partuuid UUID
//! rvmspawn-guest fb [--frames N]
//! rvmspawn-guest input --keys N [--timeout SECS] [--keyboard NAME] [--tablet NAME]
//! ```
//!
//! `find-partuuid` prints the device node (`/dev/vda2`) of the GPT partition whose unique
//! partition GUID is UUID, looking at every `vd*` disk, and exits 1 when there is none.
//!
//! `power-button` waits for a press of the ACPI power button (the input device the kernel's
//! `button` driver names "Power Button", read through evdev): it prints
//! `RVMSPAWN-POWER-BUTTON=waiting` once it reads the device and `=pressed` on a press, or
//! `=missing` when there is no such device (after waiting up to `--timeout` seconds, default
//! 5, for it to appear), exiting 0 only on a press.
//!
//! `fb` and `input` are the guest side of the graphical console's tests (the gui initramfs:
//! Debian's generic kernel with virtio-gpu and virtio-input). `fb` waits up to 20 s for the
//! virtio-gpu framebuffer, switches the console to graphics mode, draws four quadrants (red,
//! green, blue, white from the top left) and then N whole-screen frames of known colours, each
//! followed by a 1.5 s pause (see `fb.rs`). `input` waits up to 20 s for rvmspawn's virtio
//! keyboard and tablet (by name; `--keyboard`/`--tablet` for others), then reports the first N
//! key presses and every left click with the tablet's position, until it has both or after
//! `--timeout` seconds (default 60; see `input.rs`). Both print `RVMSPAWN-FB-*`,
//! `RVMSPAWN-INPUT-*`, `RVMSPAWN-KEYS=` and `RVMSPAWN-CLICK=` lines and exit 1 on an error or
//! a timeout.
//!
//! It runs on the host side too (it only needs AF_VSOCK), e.g. as the peer of the guest's
//! `stream-send`/`stream-recv` in the test host. With `--unix` the host side talks to
//! rvmspawn's userspace vsock device instead, whose host side is Unix sockets: `stream-send`
//! connects to the device's socket PATH and asks for guest port P (`CONNECT P`), and
//! `stream-recv` listens on PATH, where the device connects when the guest connects to the
//! host port that PATH stands for (`<device socket>_<port>`). With `--tcp`/`--tcp-listen` the
//! same stream goes over TCP (the network tests), in the guest and on the host alike.
//! `raw-frame` sends one Ethernet frame of N bytes through a packet socket (the oversized-frame
//! check of the network tests).
//!
//! The TPM commands speak raw TPM 2.0 to DEV (default `/dev/tpmrm0`; see `tpm.rs`) and print
//! only their result on stdout (hex for random bytes and PCR values, the text for `nv-read`,
//! nothing for `pcr-extend` and `nv-write`), so that `/init` can put it in a line of its own;
//! a failure is one line on stderr and exit status 1. PCRs are the SHA-256 bank's; `nv-write`
//! defines the index (owner hierarchy, empty password, the text's size) when it is not
//! defined yet.

mod fb;
mod input;
mod notify;
mod raw;
mod sha256;
mod stream;
mod sys;
mod tpm;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use sys::Vsock;

const USAGE: &str = "usage:
  rvmspawn-guest notify [--exit-status N] [--no-ready] [--message TEXT]... [--one-connection]
                        [--no-newline] [--address ADDR] [--entries DIR]
  rvmspawn-guest cid
  rvmspawn-guest credential ID [--entries DIR]
  rvmspawn-guest stream-send (--cid C --port P | --unix PATH --port P | --tcp IP:PORT)
                             --bytes N [--seed S] [--timeout SECS]
  rvmspawn-guest stream-recv (--port P | --unix PATH | --tcp-listen IP:PORT) [--bytes N]
                             [--timeout SECS]
  rvmspawn-guest stream-hash --bytes N [--seed S]
  rvmspawn-guest raw-frame --if IFACE --bytes N [--to MAC]
  rvmspawn-guest zero-out --device DEV --bytes N
  rvmspawn-guest get-random N [--device DEV]
  rvmspawn-guest pcr-extend PCR HEXDIGEST [--device DEV]
  rvmspawn-guest pcr-read PCR [--device DEV]
  rvmspawn-guest nv-write INDEX TEXT [--device DEV]
  rvmspawn-guest nv-read INDEX [--device DEV]
  rvmspawn-guest power-button [--timeout SECS]
  rvmspawn-guest find-partuuid UUID
  rvmspawn-guest fb [--frames N]
  rvmspawn-guest input --keys N [--timeout SECS] [--keyboard NAME] [--tablet NAME]
(TPM commands: DEV defaults to /dev/tpmrm0; PCR and INDEX decimal or 0x-hex. N may end in K, M or G: powers of 1024. --unix, for the userspace vsock device: its
socket for stream-send, <its socket>_<host port> for stream-recv. IPv6: [ADDR]:PORT)";

/// Default for `--timeout`: how long to wait for a peer, and for each read or write.
const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// Command-line options: `--name VALUE`, `--name=VALUE` or a bare `--flag`, in order.
struct Options(Vec<(String, Option<String>)>);

impl Options {
    /// `valued` options take a value, `flags` do not; anything else is a usage error.
    fn parse(args: &[String], valued: &[&str], flags: &[&str]) -> Result<Options, String> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument '{arg}'"));
            };
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            if valued.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("--{name} needs a value"))?,
                };
                out.push((name.to_string(), Some(value)));
            } else if flags.contains(&name) && inline.is_none() {
                out.push((name.to_string(), None));
            } else {
                return Err(format!("unknown option '{arg}'"));
            }
        }
        Ok(Options(out))
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// Every value of a repeatable option, in order.
    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    /// The last value given.
    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).pop()
    }

    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.get(name)
            .map(|v| parse_size(v).ok_or_else(|| format!("--{name}: not a number: '{v}'")))
            .transpose()
    }

    fn required(&self, name: &str) -> Result<u64, String> {
        self.number(name)?
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn port_or_cid(&self, name: &str) -> Result<u32, String> {
        u32::try_from(self.required(name)?).map_err(|_| format!("--{name} is out of range"))
    }

    fn timeout(&self) -> Result<Duration, String> {
        Ok(Duration::from_secs(
            self.number("timeout")?.unwrap_or(DEFAULT_TIMEOUT_SECS),
        ))
    }
}

/// A decimal number, optionally with a K, M or G suffix (powers of 1024), or 0x-hex.
fn parse_size(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok();
    }
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Print one status line at once (the console is shared with the kernel and other programs).
fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Ask `find` every `interval` until it answers, for up to `wait` (at least once).
fn wait_for<T>(
    wait: Duration,
    interval: Duration,
    mut find: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(found) = find() {
            return Some(found);
        }
        if start.elapsed() >= wait {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// The devices of sysfs class directory `dir` (`/sys/class/input`) whose entry `keep` takes,
/// each with its file `name_file` (relative to the entry; the first line): (entry, name),
/// sorted.
fn class_devices(dir: &str, name_file: &str, keep: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut list: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let entry = e.file_name().into_string().ok()?;
            keep(&entry).then_some(())?;
            let name = std::fs::read_to_string(e.path().join(name_file)).ok()?;
            Some((entry, name.lines().next().unwrap_or("").to_string()))
        })
        .collect();
    list.sort();
    list
}

/// `entry="name"`, blank-separated, for a message; `none` for none.
fn listing(devices: &[(String, String)]) -> String {
    if devices.is_empty() {
        return "none".into();
    }
    let items: Vec<String> = devices
        .iter()
        .map(|(e, n)| format!("{e}=\"{n}\""))
        .collect();
    items.join(" ")
}

fn status(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `notify`: send what systemd in a guest sends its VMM over the `vmm.notify_socket` address.
/// Every message is its own connection (connect, write, close), as sd_notify does on a stream
/// socket, unless `--one-connection`.
fn cmd_notify(opts: &Options) -> Result<ExitCode, String> {
    let newline = if opts.has("no-newline") { "" } else { "\n" };
    let mut messages = Vec::new();
    if !opts.has("no-ready") {
        messages.push(format!("READY=1{newline}"));
    }
    for m in opts.all("message") {
        messages.push(format!("{m}{newline}"));
    }
    if let Some(n) = opts.get("exit-status") {
        let n: u32 = n
            .parse()
            .map_err(|_| format!("--exit-status: not a number: '{n}'"))?;
        messages.push(format!("EXIT_STATUS={n}{newline}"));
    }
    let address = match opts.get("address") {
        Some(a) => Ok(a.as_bytes().to_vec()),
        None => notify::find_credential(
            Path::new(opts.get("entries").unwrap_or("/sys/firmware/dmi/entries")),
            notify::CREDENTIAL,
        ),
    };
    let address = match address {
        Ok(a) => a,
        Err(e) => {
            line("RVMSPAWN-NOTIFY-ADDR=missing");
            line(&format!("RVMSPAWN-NOTIFY=fail:{e}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    // systemd reads the credential as it is; a trailing newline would be part of it, but is
    // easy to pass by mistake (echo), so it is tolerated here.
    let text = String::from_utf8_lossy(&address);
    let text = text.trim_end_matches(['\n', '\r']);
    line(&format!(
        "RVMSPAWN-NOTIFY-ADDR={}",
        notify::printable(text.as_bytes())
    ));
    let result = notify::parse_address(text).and_then(|(ty, cid, port)| {
        let connect = || {
            Vsock::connect(ty, cid, port, None).map_err(|e| format!("connect to {cid}:{port}: {e}"))
        };
        let write = |sock: &mut Vsock, m: &str| {
            sock.write_all(m.as_bytes())
                .map_err(|e| format!("write {}: {e}", notify::printable(m.as_bytes())))
        };
        if opts.has("one-connection") {
            let mut sock = connect()?;
            for m in &messages {
                write(&mut sock, m)?;
            }
        } else {
            for m in &messages {
                write(&mut connect()?, m)?;
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => {
            line("RVMSPAWN-NOTIFY=ok");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            line(&format!("RVMSPAWN-NOTIFY=fail:{e}"));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `cid`: the guest's own CID, as `IOCTL_VM_SOCKETS_GET_LOCAL_CID` on `/dev/vsock` gives it.
fn cmd_cid() -> ExitCode {
    match sys::local_cid() {
        Ok(Some(cid)) => {
            line(&format!("RVMSPAWN-VSOCK-CID={cid}"));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            line("RVMSPAWN-VSOCK-CID=missing");
            ExitCode::SUCCESS
        }
        Err(e) => {
            line(&format!("RVMSPAWN-VSOCK-CID=fail:{e}"));
            ExitCode::FAILURE
        }
    }
}

/// `credential ID`: the credential's bytes from SMBIOS type 11, raw on stdout (no status
/// line), as systemd in the guest would import it; exit 1 with the reason on stderr when
/// there is none. The guest's `/init` reads `fstab.extra` with it.
fn cmd_credential(id: &str, opts: &Options) -> ExitCode {
    let dir = Path::new(opts.get("entries").unwrap_or("/sys/firmware/dmi/entries"));
    match notify::find_credential(dir, id) {
        Ok(bytes) => {
            let mut out = std::io::stdout().lock();
            status(out.write_all(&bytes).and_then(|()| out.flush()).is_ok())
        }
        Err(e) => {
            eprintln!("rvmspawn-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The transport of a stream command: vsock with the CID or port of option `vsock`, the
/// userspace vsock device's Unix socket given by `--unix`, which stands in for that option, or
/// TCP with the address of option `tcp`.
enum Via<'a> {
    Vsock(u32),
    Unix(&'a Path),
    Tcp(SocketAddr),
}

impl<'a> Via<'a> {
    fn parse(opts: &'a Options, vsock: &str, tcp: &str) -> Result<Via<'a>, String> {
        for (a, b) in [("unix", vsock), (tcp, vsock), (tcp, "unix"), (tcp, "port")] {
            if opts.has(a) && opts.has(b) {
                return Err(format!("--{a} and --{b} exclude each other"));
            }
        }
        if let Some(addr) = opts.get(tcp) {
            return addr.parse().map(Via::Tcp).map_err(|_| {
                format!("--{tcp}: not an IP address and port: '{addr}' (IP:PORT or [IPv6]:PORT)")
            });
        }
        match opts.get("unix") {
            Some(path) => Ok(Via::Unix(Path::new(path))),
            None => Ok(Via::Vsock(opts.port_or_cid(vsock)?)),
        }
    }
}

fn cmd_stream_send(opts: &Options) -> Result<ExitCode, String> {
    let via = Via::parse(opts, "cid", "tcp")?;
    let port = match via {
        Via::Tcp(_) => 0,
        _ => opts.port_or_cid("port")?,
    };
    let bytes = opts.required("bytes")?;
    let seed = opts.number("seed")?.unwrap_or(stream::DEFAULT_SEED);
    let timeout = opts.timeout()?;
    let result = match via {
        Via::Vsock(cid) => stream::send(cid, port, bytes, seed, timeout),
        Via::Unix(path) => stream::send_unix(path, port, bytes, seed, timeout),
        Via::Tcp(addr) => stream::send_tcp(addr, bytes, seed, timeout),
    };
    match result {
        Ok(s) => {
            line(&format!("RVMSPAWN-STREAM-SENT={} {}", s.bytes, s.sha256));
            line(&format!(
                "RVMSPAWN-STREAM-SEND-RATE={} {}",
                stream::rate(s.bytes, s.elapsed),
                s.elapsed.as_millis()
            ));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            line(&format!("RVMSPAWN-STREAM-SENT=fail:{e}"));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn cmd_stream_recv(opts: &Options) -> Result<ExitCode, String> {
    let via = Via::parse(opts, "port", "tcp-listen")?;
    let expect = opts.number("bytes")?;
    let timeout = opts.timeout()?;
    let result = match via {
        Via::Vsock(port) => stream::recv(port, timeout, || {
            line(&format!("RVMSPAWN-STREAM-LISTENING={port}"));
        }),
        Via::Unix(path) => stream::recv_unix(path, timeout, || {
            line(&format!("RVMSPAWN-STREAM-LISTENING={}", path.display()));
        }),
        Via::Tcp(addr) => stream::recv_tcp(addr, timeout, |bound| {
            line(&format!("RVMSPAWN-STREAM-LISTENING={bound}"));
        }),
    };
    match result {
        Ok(r) => {
            if let Some(peer) = &r.peer {
                line(&format!("RVMSPAWN-STREAM-RECV-PEER={peer}"));
            }
            let ok = expect.is_none_or(|n| n == r.bytes);
            if ok {
                line(&format!("RVMSPAWN-STREAM-RECV={} {}", r.bytes, r.sha256));
            } else {
                line(&format!(
                    "RVMSPAWN-STREAM-RECV=fail:got {} bytes, expected {} (sha256 {})",
                    r.bytes,
                    expect.unwrap_or_default(),
                    r.sha256
                ));
            }
            line(&format!(
                "RVMSPAWN-STREAM-RECV-RATE={} {}",
                stream::rate(r.bytes, r.elapsed),
                r.elapsed.as_millis()
            ));
            Ok(status(ok))
        }
        Err(e) => {
            line(&format!("RVMSPAWN-STREAM-RECV=fail:{e}"));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `stream-hash`: the SHA-256 that `stream-send` reports for the same size and seed, without
/// sending anything (for the host side of a test, and to time the hashing alone).
fn cmd_stream_hash(opts: &Options) -> Result<ExitCode, String> {
    let bytes = opts.required("bytes")?;
    let seed = opts.number("seed")?.unwrap_or(stream::DEFAULT_SEED);
    let start = std::time::Instant::now();
    let sha256 = stream::hash(bytes, seed);
    let elapsed = start.elapsed();
    line(&format!("RVMSPAWN-STREAM-HASH={bytes} {sha256}"));
    line(&format!(
        "RVMSPAWN-STREAM-HASH-RATE={} {}",
        stream::rate(bytes, elapsed),
        elapsed.as_millis()
    ));
    Ok(ExitCode::SUCCESS)
}

/// `raw-frame`: one Ethernet frame of `--bytes` bytes out of `--if`, from the interface's own
/// MAC to `--to` (default broadcast), 802.1Q-tagged (see `raw::build`).
fn cmd_raw_frame(opts: &Options) -> Result<ExitCode, String> {
    let ifname = opts.get("if").ok_or("--if is required")?;
    if ifname.is_empty() || ifname.contains('/') {
        return Err(format!("--if: not an interface name: '{ifname}'"));
    }
    let len = usize::try_from(opts.required("bytes")?).map_err(|_| "--bytes is out of range")?;
    let dst = match opts.get("to") {
        Some(mac) => {
            raw::parse_mac(mac).ok_or_else(|| format!("--to: not a MAC address: '{mac}'"))?
        }
        None => [0xff; 6],
    };
    let result = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))
        .map_err(|e| format!("{ifname}: no MAC address: {e}"))
        .and_then(|text| {
            raw::parse_mac(&text)
                .ok_or_else(|| format!("{ifname}: unreadable MAC address '{}'", text.trim()))
        })
        .and_then(|src| raw::build(dst, src, len))
        .and_then(|frame| {
            sys::send_raw_frame(ifname, &frame)
                .map_err(|e| format!("send {len} bytes on {ifname}: {e}"))
        });
    match result {
        Ok(n) => {
            line(&format!("RVMSPAWN-RAW-FRAME=sent {n}"));
            Ok(status(n == len))
        }
        Err(e) => {
            line(&format!("RVMSPAWN-RAW-FRAME=fail:{e}"));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err("no command".into());
    };
    match cmd.as_str() {
        "notify" => cmd_notify(&Options::parse(
            rest,
            &["exit-status", "message", "address", "entries"],
            &["no-ready", "one-connection", "no-newline"],
        )?),
        "cid" => {
            Options::parse(rest, &[], &[])?;
            Ok(cmd_cid())
        }
        "credential" => {
            let Some((id, rest)) = rest.split_first() else {
                return Err("credential: which one?".into());
            };
            Ok(cmd_credential(
                id,
                &Options::parse(rest, &["entries"], &[])?,
            ))
        }
        "stream-send" => cmd_stream_send(&Options::parse(
            rest,
            &["cid", "unix", "tcp", "port", "bytes", "seed", "timeout"],
            &[],
        )?),
        "stream-recv" => cmd_stream_recv(&Options::parse(
            rest,
            &["port", "unix", "tcp-listen", "bytes", "timeout"],
            &[],
        )?),
        "raw-frame" => cmd_raw_frame(&Options::parse(rest, &["if", "bytes", "to"], &[])?),
        "zero-out" => cmd_zero_out(&Options::parse(rest, &["device", "bytes"], &[])?),
        "get-random" | "pcr-extend" | "pcr-read" | "nv-write" | "nv-read" => cmd_tpm(cmd, rest),
        "stream-hash" => cmd_stream_hash(&Options::parse(rest, &["bytes", "seed"], &[])?),
        "power-button" => cmd_power_button(&Options::parse(rest, &["timeout"], &[])?),
        "fb" => {
            let opts = Options::parse(rest, &["frames"], &[])?;
            let frames = opts.number("frames")?.unwrap_or(0);
            Ok(status(fb::run(frames)))
        }
        "input" => cmd_input(&Options::parse(
            rest,
            &["keys", "timeout", "keyboard", "tablet"],
            &[],
        )?),
        "find-partuuid" => match rest {
            [uuid] => Ok(cmd_find_partuuid(uuid)),
            _ => Err("find-partuuid: one UUID".into()),
        },
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command '{other}'")),
    }
}

/// `zero-out`: zero the first N bytes of a block device with BLKZEROOUT (WRITE_ZEROES requests
/// to a virtio disk), printing `RVMSPAWN-ZERO-OUT-START` before and `RVMSPAWN-ZERO-OUT=ok` or
/// `=fail:REASON` after (the stop tests stop rvmspawn in between).
fn cmd_zero_out(opts: &Options) -> Result<ExitCode, String> {
    let device = opts.get("device").ok_or("--device is required")?;
    let bytes = opts.required("bytes")?;
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(|e| format!("{device}: {e}"))?;
    line("RVMSPAWN-ZERO-OUT-START");
    let r = sys::zero_out(&dev, 0, bytes);
    match &r {
        Ok(()) => line("RVMSPAWN-ZERO-OUT=ok"),
        Err(e) => line(&format!("RVMSPAWN-ZERO-OUT=fail:{e}")),
    }
    Ok(status(r.is_ok()))
}

/// `find-partuuid`: the partition of a `vd*` disk whose GPT entry has unique GUID `uuid`.
fn cmd_find_partuuid(uuid: &str) -> ExitCode {
    let want = uuid.to_ascii_lowercase();
    let Ok(disks) = std::fs::read_dir("/sys/block") else {
        return ExitCode::FAILURE;
    };
    for disk in disks.flatten() {
        let name = disk.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        let dev = format!("/dev/{name}");
        if let Some(index) = gpt_partition_index(Path::new(&dev), &want) {
            println!("{dev}{index}");
            return ExitCode::SUCCESS;
        }
    }
    ExitCode::FAILURE
}

/// The 1-based number of the GPT entry on `dev` whose unique GUID (text form, lowercase) is
/// `want` (512-byte sectors: the header at LBA 1).
fn gpt_partition_index(dev: &Path, want: &str) -> Option<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(dev).ok()?;
    let mut header = [0u8; 92];
    f.seek(SeekFrom::Start(512)).ok()?;
    f.read_exact(&mut header).ok()?;
    if &header[..8] != b"EFI PART" {
        return None;
    }
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let entries_lba = u64::from_le_bytes(header[72..80].try_into().ok()?);
    let count = le32(&header[80..84]).min(1024) as usize;
    let size = (le32(&header[84..88]) as usize).clamp(128, 4096);
    f.seek(SeekFrom::Start(entries_lba.checked_mul(512)?))
        .ok()?;
    let mut entry = vec![0u8; size];
    for i in 0..count {
        f.read_exact(&mut entry).ok()?;
        let g = &entry[16..32];
        let text = format!(
            "{:08x}-{:04x}-{:04x}-{}-{}",
            le32(&g[0..4]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            sha256::hex(&g[8..10]),
            sha256::hex(&g[10..16])
        );
        if text == want {
            return Some(i + 1);
        }
    }
    None
}

/// `input`: see `input::run`.
fn cmd_input(opts: &Options) -> Result<ExitCode, String> {
    let keys = usize::try_from(opts.required("keys")?).map_err(|_| "--keys is out of range")?;
    let timeout = match opts.number("timeout")? {
        Some(secs) => Duration::from_secs(secs),
        None => input::DEFAULT_TIMEOUT,
    };
    Ok(status(input::run(
        keys,
        opts.get("keyboard").unwrap_or(input::KEYBOARD_NAME),
        opts.get("tablet").unwrap_or(input::TABLET_NAME),
        timeout,
    )))
}

/// `power-button`: wait for a press of the power button (an `EV_KEY` event of `KEY_POWER`
/// with value 1 in the evdev stream: 24-byte `struct input_event`s on x86_64).
fn cmd_power_button(opts: &Options) -> Result<ExitCode, String> {
    const KEY_POWER: u16 = 116;
    let timeout = opts.number("timeout")?.unwrap_or(5);
    let found = wait_for(
        Duration::from_secs(timeout),
        Duration::from_millis(100),
        || input::find("Power Button"),
    );
    let Some(node) = found else {
        line("RVMSPAWN-POWER-BUTTON=missing");
        return Ok(ExitCode::FAILURE);
    };
    let path = input::dev_path(&node);
    let mut dev = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // From here on a press is seen (the tests wait for this line before they press).
    line("RVMSPAWN-POWER-BUTTON=waiting");
    let mut event = [0u8; input::EVENT_SIZE];
    loop {
        std::io::Read::read_exact(&mut dev, &mut event)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let e = input::Event::parse(&event);
        if e.is_press() && e.code == KEY_POWER {
            line("RVMSPAWN-POWER-BUTTON=pressed");
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// The TPM commands: `ARGS... [--device DEV]`.
fn cmd_tpm(cmd: &str, args: &[String]) -> Result<ExitCode, String> {
    let positional = match cmd {
        "pcr-extend" | "nv-write" => 2,
        _ => 1,
    };
    if args.len() < positional {
        return Err(format!("{cmd}: {positional} argument(s) needed"));
    }
    let (args, rest) = args.split_at(positional);
    let opts = Options::parse(rest, &["device"], &[])?;
    let number = |what: &str, text: &str| {
        tpm::parse_number(text).ok_or_else(|| format!("{cmd}: {what}: not a number: '{text}'"))
    };
    // Arguments first, so that a usage error is one before the device is opened.
    let request = match cmd {
        "get-random" => {
            let n = parse_size(&args[0])
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=65536).contains(n))
                .ok_or_else(|| format!("get-random: 1 to 65536 bytes, not '{}'", args[0]))?;
            TpmRequest::Random(n)
        }
        "pcr-extend" => {
            let digest = tpm::parse_hex::<{ tpm::DIGEST_LEN }>(&args[1]).ok_or_else(|| {
                format!(
                    "pcr-extend: not 64 hex digits (a SHA-256 digest): '{}'",
                    args[1]
                )
            })?;
            TpmRequest::Extend(number("PCR", &args[0])?, digest)
        }
        "pcr-read" => TpmRequest::Read(number("PCR", &args[0])?),
        "nv-write" => TpmRequest::NvWrite(number("INDEX", &args[0])?, args[1].clone()),
        _ => TpmRequest::NvRead(number("INDEX", &args[0])?),
    };
    let device = opts.get("device").unwrap_or("/dev/tpmrm0");
    let result = tpm::Transport::open(device).and_then(|mut t| match request {
        TpmRequest::Random(n) => tpm::get_random(&mut t, n).map(|b| Some(sha256::hex(&b))),
        TpmRequest::Extend(pcr, digest) => tpm::pcr_extend(&mut t, pcr, &digest).map(|()| None),
        TpmRequest::Read(pcr) => tpm::pcr_read(&mut t, pcr).map(|d| Some(sha256::hex(&d))),
        TpmRequest::NvWrite(index, text) => {
            tpm::nv_write(&mut t, index, text.as_bytes()).map(|()| None)
        }
        TpmRequest::NvRead(index) => tpm::nv_read(&mut t, index)
            .map(|data| Some(String::from_utf8_lossy(&data).into_owned())),
    });
    match result {
        Ok(out) => {
            if let Some(out) = out {
                line(&out);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("rvmspawn-guest: {cmd}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What a TPM command was asked to do.
enum TpmRequest {
    Random(usize),
    Extend(u32, [u8; tpm::DIGEST_LEN]),
    Read(u32),
    NvWrite(u32, String),
    NvRead(u32),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rvmspawn-guest: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// What `run` says of the command line `cmd` (words split on blanks), which must fail.
    fn usage_error(cmd: &str) -> String {
        run(&args(&cmd.split(' ').collect::<Vec<_>>()))
            .err()
            .unwrap()
    }

    /// Each command line fails with an error that contains its text.
    fn expect_usage_errors(cases: &[(&str, &str)]) {
        for (cmd, want) in cases {
            let err = usage_error(cmd);
            assert!(err.contains(want), "{cmd}: {err}");
        }
    }

    #[test]
    fn options() {
        let o = Options::parse(
            &args(&[
                "--port",
                "5",
                "--bytes=64M",
                "--message",
                "A",
                "--message=B",
                "--x",
            ]),
            &["port", "bytes", "message"],
            &["x"],
        )
        .unwrap();
        assert_eq!(o.required("port"), Ok(5));
        assert_eq!(o.required("bytes"), Ok(64 << 20));
        assert_eq!(o.all("message"), vec!["A", "B"]);
        assert!(o.has("x"));
        assert!(o.required("cid").is_err());
        assert!(Options::parse(&args(&["--port"]), &["port"], &[]).is_err());
        assert!(Options::parse(&args(&["--nope"]), &["port"], &[]).is_err());
        assert!(Options::parse(&args(&["--x=1"]), &[], &["x"]).is_err());
        assert!(Options::parse(&args(&["plain"]), &[], &[]).is_err());
    }

    #[test]
    fn unix_excludes_the_vsock_address() {
        let send = "stream-send --unix /x --cid 3 --port 1 --bytes 1";
        let recv = "stream-recv --unix /x --port 1";
        for cmd in [send, recv] {
            let err = usage_error(cmd);
            assert!(err.contains("--unix and --"), "{err}");
        }
        assert!(run(&args(&["stream-send", "--port", "1", "--bytes", "1"])).is_err());
        assert!(run(&args(&["stream-recv", "--bytes", "1"])).is_err());
    }

    #[test]
    fn tcp_excludes_the_other_addresses() {
        expect_usage_errors(&[
            (
                "stream-send --tcp 127.0.0.1:1 --cid 3 --bytes 1",
                "--tcp and --cid",
            ),
            (
                "stream-send --tcp 127.0.0.1:1 --unix /x --bytes 1",
                "--tcp and --unix",
            ),
            (
                "stream-send --tcp 127.0.0.1:1 --port 5 --bytes 1",
                "--tcp and --port",
            ),
            (
                "stream-recv --tcp-listen 0.0.0.0:1 --port 5",
                "--tcp-listen and --port",
            ),
            (
                "stream-recv --tcp-listen 0.0.0.0:1 --unix /x",
                "--tcp-listen and --unix",
            ),
            (
                "stream-send --tcp localhost:1 --bytes 1",
                "--tcp: not an IP address and port",
            ),
            (
                "stream-send --tcp 10.0.2.2 --bytes 1",
                "--tcp: not an IP address and port",
            ),
            (
                "stream-recv --tcp-listen 0.0.0.0",
                "--tcp-listen: not an IP address and port",
            ),
            ("stream-send --tcp=10.0.2.2:5000", "--bytes is required"),
        ]);
    }

    #[test]
    fn tcp_addresses_parse() {
        let o = Options::parse(&args(&["--tcp", "[::1]:5201"]), &["tcp"], &[]).unwrap();
        match Via::parse(&o, "cid", "tcp") {
            Ok(Via::Tcp(a)) => assert_eq!(a, "[::1]:5201".parse::<SocketAddr>().unwrap()),
            _ => panic!("not TCP"),
        }
    }

    #[test]
    fn raw_frame_usage_errors() {
        expect_usage_errors(&[
            ("raw-frame --bytes 100", "--if is required"),
            (
                "raw-frame --if ../x --bytes 100",
                "--if: not an interface name",
            ),
            ("raw-frame --if lo", "--bytes is required"),
            (
                "raw-frame --if lo --bytes 100 --to 1:2",
                "--to: not a MAC address",
            ),
        ]);
    }

    #[test]
    fn tpm_usage_errors_come_before_the_device() {
        expect_usage_errors(&[
            ("get-random", "1 argument(s) needed"),
            ("get-random 0", "1 to 65536 bytes"),
            ("pcr-extend 16 abcd", "not 64 hex digits"),
            ("pcr-read x", "PCR: not a number"),
            ("nv-write 0x1500016", "2 argument(s) needed"),
            ("nv-read 1 --bogus", "unknown option"),
        ]);
    }

    #[test]
    fn gui_usage_errors() {
        expect_usage_errors(&[
            ("input", "--keys is required"),
            ("input --keys x", "--keys: not a number"),
            ("input --keys 3 --wait 1", "unknown option"),
            ("fb --frames many", "--frames: not a number"),
            ("fb 3", "unexpected argument"),
        ]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("67108864"), Some(67108864));
        assert_eq!(parse_size("64M"), Some(67108864));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("0x10"), Some(16));
        for bad in ["", "M", "-1", "1.5M", "1T", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
