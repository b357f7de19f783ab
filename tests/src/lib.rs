//! Harness for integration tests that boot real guests with the `rvmspawn` binary.
//!
//! A batch of boots runs as one shell script, either directly (when `/dev/kvm` is backed by
//! hardware virtualisation) or inside the nested test host (`scripts/testhost.sh`), because one
//! test-host start costs several seconds under emulation. Each boot's output is framed by
//! marker lines, so every test asserts on exactly what its own guest printed.
//!
//! `RVMSPAWN_TEST_MODE=direct|testhost` forces the mode; `RVMSPAWN_BIN` names the binary
//! (default: `target/release/rvmspawn`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The rvmspawn binary under test.
pub fn rvmspawn_bin() -> PathBuf {
    let bin = std::env::var_os("RVMSPAWN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/rvmspawn"));
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build --release` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Where the guest assets are (built by `scripts/assets.sh`).
pub fn assets() -> PathBuf {
    repo_root().join(".cache/assets")
}

/// How long one batch may take in the test host, unless the batch sets its own
/// ([`Batch::timeout_secs`]). A batch of the boot tests takes about a minute; a test host that
/// has not finished after five is wedged (docs/testing.md).
const BATCH_TIMEOUT_SECS: u64 = 300;

/// How boots are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Straight on this machine's `/dev/kvm`.
    Direct,
    /// Inside the nested test host.
    TestHost,
}

/// Decide the mode: forced by `RVMSPAWN_TEST_MODE`, else direct only when `/dev/kvm` is backed
/// by VT-x/AMD-V (the kvm_intel or kvm_amd module) rather than a software hypervisor.
pub fn mode() -> Mode {
    match std::env::var("RVMSPAWN_TEST_MODE").as_deref() {
        Ok("direct") => return Mode::Direct,
        Ok("testhost") => return Mode::TestHost,
        Ok(other) if !other.is_empty() => {
            panic!("RVMSPAWN_TEST_MODE must be 'direct' or 'testhost', not '{other}'")
        }
        _ => {}
    }
    let hw =
        Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
    if hw && Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists() {
        Mode::Direct
    } else {
        Mode::TestHost
    }
}

/// Build (or find in the cache) the guest and test-host assets.
pub fn ensure_assets() {
    let status = Command::new(repo_root().join("scripts/assets.sh"))
        .status()
        .expect("run scripts/assets.sh");
    assert!(status.success(), "scripts/assets.sh failed: {status}");
}

/// What one boot printed (stdout and stderr together) and how rvmspawn exited.
#[derive(Debug, Clone, Default)]
pub struct BootResult {
    /// Everything printed between this boot's markers.
    pub output: String,
    /// rvmspawn's exit status (or the shell's, e.g. 124 from `timeout`).
    pub rc: Option<i32>,
}

impl BootResult {
    /// The value of the first `KEY=value` line the guest printed.
    pub fn value(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.output
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    /// The values of every `KEY=value` line, in the order printed (a guest that reboots prints
    /// its lines once per boot).
    pub fn values(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}=");
        self.output
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// The lines a step marked as one part of it (one run of several in a step) by starting
    /// them with `PREFIX: `, without that prefix.
    pub fn part(&self, prefix: &str) -> BootResult {
        let prefix = format!("{prefix}: ");
        BootResult {
            output: self
                .output
                .lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|l| format!("{}\n", l.trim_end_matches('\r')))
                .collect(),
            rc: None,
        }
    }

    /// How many lines are exactly `line`.
    pub fn count_lines(&self, line: &str) -> usize {
        self.output
            .lines()
            .filter(|l| l.trim_end_matches('\r') == line)
            .count()
    }
}

/// What a batch's steps printed, by step name.
#[derive(Debug)]
pub struct Results(pub BTreeMap<String, BootResult>);

impl Results {
    /// Step `name`'s result; a step that did not run (the batch failed before it) fails the
    /// test that asks.
    pub fn step(&self, name: &str) -> &BootResult {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("boot '{name}' did not run; see the batch output above"))
    }
}

/// Shell that builds `$D/uki.efi` from `$KERNEL`, `$INITRD` and an embedded command line
/// (`$UKI_CMDLINE`, by default `rvmspawn.uki=embedded`), the
/// way UKIs were assembled before ukify: sections added to the stub with objcopy.
pub const UKI_BUILD: &str = r#"D=$(mktemp -d)
STUB=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
[ -f "$STUB" ] || { echo "no $STUB (package systemd-boot-efi)"; exit 99; }
printf '%s' "${UKI_CMDLINE:-rvmspawn.uki=embedded}" > "$D/cmdline"
printf 'ID=rvmspawn-test
' > "$D/os-release"
objcopy     --add-section .osrel="$D/os-release" --change-section-vma .osrel=0x20000     --add-section .cmdline="$D/cmdline" --change-section-vma .cmdline=0x30000     --add-section .linux="$KERNEL" --change-section-vma .linux=0x2000000     --add-section .initrd="$INITRD" --change-section-vma .initrd=0x4000000     "$STUB" "$D/uki.efi" || exit 98"#;

/// A set of named shell snippets, each one boot, run in one go.
#[derive(Debug, Default)]
pub struct Batch {
    steps: Vec<(String, String)>,
    timeout_secs: Option<u64>,
    tpm: bool,
}

impl Batch {
    /// A new, empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a step: `script` is POSIX shell run with `$RVMSPAWN`, `$KERNEL`, `$VMLINUX` and
    /// `$INITRD` set, and `$XDG_CACHE_HOME` a writable directory of the batch's own (where
    /// rvmspawn caches the ELF it extracts from a bzImage); its exit status is the step's.
    pub fn step(mut self, name: &str, script: impl Into<String>) -> Self {
        self.steps.push((name.to_string(), script.into()));
        self
    }

    /// Give the whole batch `secs` seconds in the test host instead of the default 300 (for
    /// batches of slow boots, e.g. through UEFI firmware).
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = Some(secs);
        self
    }

    /// Let `$RVMSPAWN` give its guests a TPM as rvmspawn does by default (`--tpm=auto`: one
    /// whenever swtpm is installed). Without this, `$RVMSPAWN` is a wrapper that runs the binary
    /// with `--tpm=no` before the step's own options (`exec`, so the PID a step takes from `$!`
    /// is rvmspawn's): a TPM costs every run a swtpm start and, for a run without `-i`/`-D`, a
    /// manufactured state (seconds under emulation), and only the TPM tests want one.
    pub fn with_tpm(mut self) -> Self {
        self.tpm = true;
        self
    }

    /// Run every step and return each one's result by name.
    pub fn run(self) -> Results {
        ensure_assets();
        let root = repo_root();
        let dir = root.join(".cache/test-batches");
        std::fs::create_dir_all(&dir).expect("create .cache/test-batches");
        let bin = rvmspawn_bin();
        let wrapper = dir.join(format!("rvmspawn-no-tpm-{}", std::process::id()));
        let rvmspawn = if self.tpm {
            bin
        } else {
            write_no_tpm_wrapper(&wrapper, &bin);
            wrapper.clone()
        };
        let a = assets();
        let mut head = String::from("#!/bin/sh\n");
        head += &format!(
            "RVMSPAWN='{}'\nKERNEL='{}'\nVMLINUX='{}'\nINITRD='{}'\nexport RVMSPAWN KERNEL VMLINUX INITRD\n",
            rvmspawn.display(),
            a.join("guest/vmlinuz").display(),
            a.join("guest/vmlinux").display(),
            a.join("guest/initramfs.cpio.gz").display(),
        );
        // No $TERM: rvmspawn passes a valid one to the guest's command line (TERM=,
        // systemd.tty.term.hvc0=), which the steps' expectations would then depend on; a step
        // that tests it sets its own.
        head += "unset TERM\n";
        // One cache of extracted kernels for the whole batch, somewhere writable (the test
        // host sees the repository read-only and has /var/cache on it): the batch's first
        // bzImage boot extracts, the others hit the cache. Removed at the end.
        head += "XDG_CACHE_HOME=$(mktemp -d \"${TMPDIR:-/tmp}/rvmspawn-test-cache.XXXXXX\")\nexport XDG_CACHE_HOME\n";
        // RVMSPAWN_TEST_STEPS=a,b runs only those steps (to rerun a few while working on them);
        // the tests of the others then fail as "did not run".
        let only = std::env::var("RVMSPAWN_TEST_STEPS").ok();
        let wanted = |name: &str| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|s| s == name))
        };
        let mut pending: Vec<&(String, String)> =
            self.steps.iter().filter(|(name, _)| wanted(name)).collect();
        let path = dir.join(format!("batch-{}.sh", std::process::id()));
        let mode = mode();
        let timeout = self.timeout_secs.unwrap_or(BATCH_TIMEOUT_SECS).to_string();
        let command = || match mode {
            Mode::Direct => {
                let mut c = Command::new("sh");
                c.arg(&path);
                c
            }
            Mode::TestHost => {
                let mut c = Command::new(root.join("scripts/testhost.sh"));
                c.args(["--timeout", timeout.as_str(), "--", "sh"])
                    .arg(&path);
                c
            }
        };
        // Nested virtualisation under emulation occasionally wedges the whole test host
        // (testhost.sh: 124 timeout or no progress, 125 test host failed); that says nothing
        // about rvmspawn, so the steps that had not finished (the one cut short and those after
        // it) run again in a fresh test host, five times at most; the finished ones keep their
        // results. A failing guest or rvmspawn is never retried: the batch then ends normally
        // and the tests see what it printed. Every step is self-contained (its own temporary
        // directory, its own host-side set-up), so a step runs the same in any test host.
        let mut results = BTreeMap::new();
        for attempt in 0..6 {
            // (The attempt's number is there for a step to see, e.g. to test this retry.)
            let mut script = format!("{head}RVMSPAWN_BATCH_ATTEMPT={attempt}\n");
            for (name, step) in &pending {
                script += &format!(
                    "echo '@@RVMSPAWN-TEST-BEGIN {name}'\n( {step}\n) 2>&1 </dev/null\necho \"@@RVMSPAWN-TEST-END {name} rc=$?\"\n"
                );
            }
            script += "rm -rf \"$XDG_CACHE_HOME\"\n";
            std::fs::write(&path, script).expect("write the batch script");
            let (status, text) = run_streaming(command().current_dir(&root));
            eprintln!("batch ({mode:?}) exited {status}");
            let mut got = parse(&text);
            let wedged = mode == Mode::TestHost && matches!(status.code(), Some(124 | 125));
            // Finished steps (an END marker, so an exit status) are kept.
            got.retain(|name, r| {
                if r.rc.is_some() {
                    results.insert(name.clone(), r.clone());
                    false
                } else {
                    true
                }
            });
            pending.retain(|(name, _)| !results.contains_key(name));
            if !wedged || pending.is_empty() || attempt == 5 {
                // What a step cut short printed still shows, with no exit status.
                results.extend(got);
                break;
            }
            let names: Vec<&str> = pending.iter().map(|(name, _)| name.as_str()).collect();
            eprintln!(
                "test host failed ({status}); running the unfinished steps again: {}",
                names.join(", ")
            );
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&wrapper);
        Results(results)
    }
}

/// A shell script at `path` that runs `bin --tpm=no` with its own arguments after that (a later
/// `--tpm=` among them still wins: the last one counts).
fn write_no_tpm_wrapper(path: &Path, bin: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let script = format!("#!/bin/sh\nexec '{}' --tpm=no \"$@\"\n", bin.display());
    std::fs::write(path, script).expect("write the --tpm=no wrapper");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("make the --tpm=no wrapper executable");
}

/// Run `cmd`, echoing its output to stderr line by line as it comes (so a slow or stuck boot
/// shows where it is, in the test log), and return its status and everything it printed.
fn run_streaming(cmd: &mut Command) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the batch");
    let mut text = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    let started = std::time::Instant::now();
    let mut step_start = started;
    for line in BufReader::new(stdout).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        eprintln!("  | {line}");
        if line.contains("@@RVMSPAWN-TEST-BEGIN ") {
            step_start = std::time::Instant::now();
        } else if let Some(at) = line.find("@@RVMSPAWN-TEST-END ") {
            let name = line[at..].split(' ').nth(1).unwrap_or("?");
            record_time(name, step_start.elapsed());
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait().expect("wait for the batch");
    record_time("(whole attempt)", started.elapsed());
    (status, text)
}

/// Append how long a step (or a whole batch attempt, test-host start and all) took to
/// `target/test-step-times.txt` as `BATCH STEP SECONDS`; `scripts/test.sh` sums them up at the
/// end of a run, so that the time each batch costs shows in every log.
fn record_time(step: &str, took: std::time::Duration) {
    use std::io::Write;
    let batch = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| s.rsplit_once('-').map_or(s.clone(), |(b, _)| b.to_string()))
        .unwrap_or_else(|| "?".into());
    let path = repo_root().join("target/test-step-times.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{batch} {step} {:.1}", took.as_secs_f64());
    }
}

/// Split a batch's output into its steps.
pub fn parse(text: &str) -> BTreeMap<String, BootResult> {
    let mut results = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("@@RVMSPAWN-TEST-BEGIN ") {
            current = Some((name.to_string(), String::new()));
        } else if let Some(at) = line.find("@@RVMSPAWN-TEST-END ") {
            // A guest killed mid-line leaves no newline, so the marker may follow its text.
            let rest = &line[at + "@@RVMSPAWN-TEST-END ".len()..];
            let (name, rc) = rest.rsplit_once(" rc=").unwrap_or((rest, ""));
            if let Some((_, mut output)) = current.take() {
                if at > 0 {
                    output.push_str(&line[..at]);
                    output.push('\n');
                }
                results.insert(
                    name.to_string(),
                    BootResult {
                        output,
                        rc: rc.parse().ok(),
                    },
                );
            }
        } else if let Some((_, output)) = current.as_mut() {
            output.push_str(line);
            output.push('\n');
        }
    }
    // A step cut short (test host died) still shows what it printed, with no exit status.
    if let Some((name, output)) = current {
        results.insert(name, BootResult { output, rc: None });
    }
    results
}

/// Shell function `processes_below NAME PID`: the PIDs of the processes named NAME below PID
/// (its children and theirs, from `/proc/PID/task/*/children`), so a step finds the helpers of
/// its own rvmspawn and never another run's by name alone. A macro, so that a batch's shell
/// constant can start with it through `concat!`.
#[macro_export]
macro_rules! processes_below_sh {
    () => {
        r#"processes_below() {
    local c
    for c in $(cat /proc/"$2"/task/*/children 2>/dev/null); do
        [ "$(cat /proc/"$c"/comm 2>/dev/null)" = "$1" ] && echo "$c"
        processes_below "$1" "$c"
    done
}
"#
    };
}

/// Shell that defines `$NO_VHOST` (in `$D`): `$NO_VHOST CMD...` runs CMD in a mount namespace
/// whose `/dev` holds only `kvm`, `null`, `zero`, `urandom` and what the shell lines `$extra`
/// make, so rvmspawn finds no vhost device and serves vsock (and a NIC) itself. It execs all
/// the way down, so the PID of `$NO_VHOST rvmspawn` is rvmspawn's. A macro, for `concat!`.
#[macro_export]
macro_rules! no_vhost_sh {
    ($extra:literal) => {
        concat!(
            r#"cat >"$D/no_vhost" <<'EOF'
set -e
k=$(stat -c "%t %T" /dev/kvm)
mount -t tmpfs -o mode=755 none /dev
mknod /dev/kvm c $((0x${k% *})) $((0x${k#* }))
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/urandom c 1 9
"#,
            $extra,
            r#"exec "$@"
EOF
NO_VHOST="unshare -m sh $D/no_vhost"
"#
        )
    };
}

/// rvmspawn's own notify-socket credential, present whenever the guest has vsock (the test
/// host has vhost-vsock); `tests/tests/vsock.rs` checks it.
pub const NOTIFY_CREDENTIAL: &[u8] = b"io.systemd.credential.binary:vmm.notify_socket=";

/// rvmspawn's two `--pass-ssh-key` credentials (its default, whenever the guest has vsock);
/// `tests/tests/systemd.rs` proves them by logging in with the key.
pub const SSH_CREDENTIALS: [&[u8]; 2] = [
    b"io.systemd.credential.binary:ssh.ephemeral-authorized_keys-all=",
    b"io.systemd.credential.binary:systemd.unit-dropin.sshd-vsock@.service=",
];

/// SHA-256 of the first 64 MiB of the guest program's stream (`guest-tools/`) with its default
/// seed, as its report line gives it.
pub const STREAM_64M: &str =
    "67108864 aabcff14084e83a052a50e88d22a20ece85a9594c1e171c1564a308c5dc9d45c";

/// 64 MiB each way arrived intact (vsock or TCP): what the host side sent (seed 2, its lines
/// prefixed `HOST-`) is what the guest received, and the guest's default stream is what the
/// host side received.
pub fn assert_streams_intact(r: &BootResult) {
    let sent = r.value("HOST-RVMSPAWN-STREAM-SENT").expect("host sent");
    assert!(sent.starts_with("67108864 "), "{}", r.output);
    assert_eq!(r.value("RVMSPAWN-STREAM-RECV"), Some(sent), "{}", r.output);
    for key in ["RVMSPAWN-STREAM-SENT", "HOST-RVMSPAWN-STREAM-RECV"] {
        assert_eq!(r.value(key), Some(STREAM_64M), "{key}\n{}", r.output);
    }
}

/// Every string of every SMBIOS type 11 structure the guest printed (its
/// `RVMSPAWN-SMBIOS11-RAW=` lines, hex), in order, except rvmspawn's own vsock credentials
/// (the notify socket, the SSH key).
pub fn oem_strings(r: &BootResult) -> Vec<Vec<u8>> {
    let unhex = |s: &str| -> Vec<u8> {
        assert!(
            s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit()),
            "not a whole hex line (cut by other output?): {s}"
        );
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
            .collect()
    };
    let mut out = Vec::new();
    for line in r.output.lines() {
        let Some(hex) = line.trim_end().strip_prefix("RVMSPAWN-SMBIOS11-RAW=") else {
            continue;
        };
        let raw = unhex(hex);
        assert!(raw.len() > 5 && raw[0] == 11, "a type 11 structure: {hex}");
        let count = raw[4] as usize;
        let strings: Vec<Vec<u8>> = raw[raw[1] as usize..]
            .split(|b| *b == 0)
            .take(count)
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(strings.len(), count, "{hex}");
        out.extend(strings.into_iter().filter(|s| {
            !s.starts_with(NOTIFY_CREDENTIAL) && !SSH_CREDENTIALS.iter().any(|p| s.starts_with(p))
        }));
    }
    out
}

/// SipHash-2-4 of `data` under `key`, written here from the algorithm's definition (Aumasson
/// and Bernstein, 2012) so that the tests check rvmspawn's derivations against a computation
/// of their own, not against rvmspawn's code.
pub fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let (k0, k1) = (word(&key[..8]), word(&key[8..]));
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut compress = |m: u64| {
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    };
    let mut blocks = data.chunks_exact(8);
    for b in &mut blocks {
        compress(word(b));
    }
    // The last block: the remaining bytes, and the length's low byte on top.
    compress(word(blocks.remainder()) | ((data.len() as u64) << 56));
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The CID systemd-vmspawn gives machine `name` when that CID is free (its first try):
/// 3 + SipHash-2-4(the name's bytes followed by the try number 0 as a little-endian u32) modulo
/// `UINT_MAX - 4`, keyed with `03adf0a4592c7711da390cbaf54c8052`
/// (/work/shared/reference/vmspawn-behaviour.md, `--vsock-cid`).
pub fn vmspawn_cid(name: &str) -> u64 {
    const KEY: [u8; 16] = [
        0x03, 0xad, 0xf0, 0xa4, 0x59, 0x2c, 0x77, 0x11, 0xda, 0x39, 0x0c, 0xba, 0xf5, 0x4c, 0x80,
        0x52,
    ];
    let mut data = name.as_bytes().to_vec();
    data.extend_from_slice(&0u32.to_le_bytes());
    3 + siphash24(&KEY, &data) % (u64::from(u32::MAX) - 4)
}

/// The system UUID rvmspawn documents for machine `name` without `--uuid=`
/// (docs/architecture.md): the first 16 bytes of SHA-256 over rvmspawn's namespace UUID
/// b68e2bd7-3f49-420e-aef6-fd99bb603b75 followed by the name, with the version nibble set to 8
/// and the variant bits to 0b10; in its lowercase text form.
pub fn rvmspawn_name_uuid(name: &str) -> String {
    use sha2::{Digest, Sha256};
    const NAMESPACE: [u8; 16] = [
        0xb6, 0x8e, 0x2b, 0xd7, 0x3f, 0x49, 0x42, 0x0e, 0xae, 0xf6, 0xfd, 0x99, 0xbb, 0x60, 0x3b,
        0x75,
    ];
    let mut h = Sha256::new();
    h.update(NAMESPACE);
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&digest[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_papers_vectors() {
        // Key 00..0f; messages 00..(n-1): the reference implementation's vectors for n = 0,
        // 7, 8 and 15 (one block short, one exactly, one partial second block).
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..64).collect();
        assert_eq!(siphash24(&key, &msg[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(&key, &msg[..7]), 0xab02_00f5_8b01_d137);
        assert_eq!(siphash24(&key, &msg[..8]), 0x93f5_f579_9a93_2462);
        assert_eq!(siphash24(&key, &msg[..15]), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn name_uuid_is_marked_version_8_variant_1() {
        // The value the boot crate's own test pins for "image".
        assert_eq!(
            rvmspawn_name_uuid("image"),
            "7fdf72d2-bcff-8f32-bccf-a846878051c5"
        );
        let u = rvmspawn_name_uuid("x");
        assert_eq!(u.len(), 36, "{u}");
        assert_eq!(&u[14..15], "8", "{u}");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }

    #[test]
    fn parses_framed_steps() {
        let r = parse(
            "noise\n@@RVMSPAWN-TEST-BEGIN a\nRVMSPAWN-NPROC=2\r\nx\n@@RVMSPAWN-TEST-END a rc=0\n@@RVMSPAWN-TEST-BEGIN b\npartial\n",
        );
        assert_eq!(r["a"].rc, Some(0));
        assert_eq!(r["a"].value("RVMSPAWN-NPROC"), Some("2"));
        assert_eq!(r["a"].count_lines("x"), 1);
        assert_eq!(r["a"].values("RVMSPAWN-NPROC"), ["2"]);
        assert!(r["a"].values("RVMSPAWN-MISSING").is_empty());
        assert_eq!(r["b"].rc, None);
        assert!(r["b"].output.contains("partial"));
        // The end marker right after a guest's unfinished line still ends the step.
        let r = parse(
            "@@RVMSPAWN-TEST-BEGIN c
[ 1.0] half a line@@RVMSPAWN-TEST-END c rc=0
",
        );
        assert_eq!(r["c"].rc, Some(0));
        assert!(r["c"].output.contains("half a line"));
    }
}
