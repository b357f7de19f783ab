//! Boot Debian's cloud kernel with rvmspawn and check what the guest itself reports.
//!
//! All boots run in one batch (one test-host start); each test checks its own boot's output.
//! The guest's /init (scripts/assets.sh) prints `RVMSPAWN-*` lines and then acts on
//! `rvmspawn.action=` (poweroff by default).

use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult, Results};

const T: &str = "timeout -s KILL 120";

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new()
            .step(
                "default",
                format!(r#"{T} "$RVMSPAWN" --linux="$KERNEL" --initrd="$INITRD""#),
            )
            .step(
                "smp2",
                format!(r#"{T} "$RVMSPAWN" -q --qemu-smp=2 --linux="$KERNEL" --initrd="$INITRD""#),
            )
            .step(
                "mem1g",
                format!(r#"{T} "$RVMSPAWN" -q --qemu-mem=1G --linux="$KERNEL" --initrd="$INITRD""#),
            )
            .step(
                "args",
                format!(
                    r#"{T} "$RVMSPAWN" -q -M argtest --linux="$KERNEL" --initrd="$INITRD" rvmspawn.test=hello quiet -- foo=bar"#
                ),
            )
            .step(
                // At debug level rvmspawn says which entry it uses; the guest prints its
                // kernel log, whose memory map shows what only the PVH entry code adds.
                "elf",
                format!(
                    r#"SYSTEMD_LOG_LEVEL=debug {T} "$RVMSPAWN" -q --linux="$VMLINUX" --initrd="$INITRD" rvmspawn.dmesg=1"#
                ),
            )
            .step(
                // The guest reboots: the VM must start again (as vmspawn's QEMU does), until
                // SIGTERM stops it cleanly. Polled for at most 120 s, while rvmspawn lives.
                "reboot",
                r#""$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" rvmspawn.action=reboot > "${TMPDIR:-/tmp}/rvmspawn-reboot-$$.out" 2>&1 &
pid=$!
i=0
while [ "$(grep -c '^RVMSPAWN-GUEST-INIT' "${TMPDIR:-/tmp}/rvmspawn-reboot-$$.out")" -lt 2 ] && [ $i -lt 1200 ] && kill -0 $pid 2>/dev/null; do sleep 0.1; i=$((i+1)); done
kill -TERM $pid
wait $pid
rc=$?
cat "${TMPDIR:-/tmp}/rvmspawn-reboot-$$.out"
exit $rc"#,
            )
            .step(
                // The test build's hook makes the first queue worker (virtio-rng's, as the
                // guest reads /dev/hwrng) call mount(2), which no seccomp list allows.
                "seccomp-worker",
                format!(
                    r#"ulimit -c 0; RVMSPAWN_TEST_SECCOMP_VIOLATION=worker {T} '{}' -q --qemu-vsock=no --tpm=no --console-transport=serial --linux="$KERNEL" --initrd="$INITRD" rvmspawn.rng=1"#,
                    test_hooks_bin().display()
                ),
            )
            .run()
    })
}

/// The build with test hooks (`--features test-hooks`); scripts/test.sh builds it.
fn test_hooks_bin() -> std::path::PathBuf {
    let bin = rvmspawn_tests::repo_root().join("target/test-hooks/rvmspawn");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --profile test-hooks -p rvmspawn --features test-hooks` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

fn assert_booted(r: &BootResult) {
    assert_eq!(
        r.count_lines("RVMSPAWN-GUEST-INIT"),
        1,
        "guest did not reach /init exactly once:\n{}",
        r.output
    );
}

#[test]
fn guest_reaches_init_and_poweroff_exits_zero() {
    let r = results().step("default");
    assert_booted(r);
    assert_eq!(r.value("RVMSPAWN-NPROC"), Some("1"), "default is one vCPU");
    assert_eq!(r.value("RVMSPAWN-ACTION"), Some("poweroff"));
    assert_eq!(
        r.rc,
        Some(0),
        "guest poweroff must end rvmspawn with 0:\n{}",
        r.output
    );
    // Without -q, rvmspawn announces itself and how to leave.
    assert!(r.output.contains("Spawning VM "), "{}", r.output);
    assert!(
        r.output
            .contains("Press Ctrl-] three times within 1s to kill VM.")
    );
    // The default 2G of memory.
    let kb: u64 = r.value("RVMSPAWN-MEMTOTAL-KB").unwrap().parse().unwrap();
    assert!((1_800_000..=2_097_152).contains(&kb), "MemTotal {kb} kB");
}

#[test]
fn two_vcpus_are_two_cpus_in_the_guest() {
    let r = results().step("smp2");
    assert_booted(r);
    assert_eq!(r.value("RVMSPAWN-NPROC"), Some("2"), "{}", r.output);
    assert_eq!(r.rc, Some(0));
}

#[test]
fn one_gib_of_memory_is_about_one_gib_in_the_guest() {
    let r = results().step("mem1g");
    assert_booted(r);
    let kb: u64 = r.value("RVMSPAWN-MEMTOTAL-KB").unwrap().parse().unwrap();
    // MemTotal excludes the kernel image and reserved areas, so it is a little below 1 GiB.
    assert!((900_000..=1_048_576).contains(&kb), "MemTotal {kb} kB");
    assert_eq!(r.rc, Some(0));
}

#[test]
fn extra_arguments_reach_the_kernel_command_line() {
    let r = results().step("args");
    assert_booted(r);
    let cmdline = r
        .value("RVMSPAWN-CMDLINE")
        .expect("guest printed its cmdline");
    assert!(
        cmdline.starts_with(&format!("{} ", vmm_default_cmdline())),
        "{cmdline}"
    );
    assert!(cmdline.contains(" rvmspawn.test=hello quiet"), "{cmdline}");
    assert!(cmdline.contains("foo=bar"), "{cmdline}");
    // -q: only the guest's console.
    assert!(!r.output.contains("Spawning VM"), "{}", r.output);
    assert_eq!(r.rc, Some(0));
}

#[test]
fn elf_vmlinux_boots_through_pvh() {
    let r = results().step("elf");
    assert_booted(r);
    assert_eq!(r.rc, Some(0), "{}", r.output);
    // rvmspawn chose the PVH entry (a vmlinux without the note, or a broken detection, gets
    // the 64-bit entry, which boots too)...
    assert!(
        r.output.lines().any(
            |l| l.starts_with("Booting ") && l.contains("/vmlinux through its PVH entry at 0x")
        ),
        "{}",
        r.output
    );
    // ...and the guest's kernel came in through it: Linux's PVH entry code (and only that)
    // reserves the legacy ISA range 0xa0000-0xfffff itself, on top of rvmspawn's map, whose
    // reserved area starts at 0xe0000 (boot::x86_64::layout).
    assert!(
        r.output.lines().any(|l| l.starts_with("RVMSPAWN-DMESG: ")
            && l.contains("BIOS-e820: [mem 0x00000000000a0000-0x00000000000fffff] reserved")),
        "{}",
        r.output
    );
}

#[test]
fn guest_reboot_restarts_the_vm_and_sigterm_stops_it() {
    let r = results().step("reboot");
    assert!(
        r.count_lines("RVMSPAWN-GUEST-INIT") >= 2,
        "the guest's reboot must start it again:\n{}",
        r.output
    );
    assert_eq!(
        r.rc,
        Some(0),
        "SIGTERM ends rvmspawn cleanly:\n{}",
        r.output
    );
}

/// rvmspawn's default kernel command line (vmm::ConsoleConfig::kernel_args: the virtio
/// console; the test host passes no $TERM), which the guest must see first, before the user's
/// arguments.
fn vmm_default_cmdline() -> &'static str {
    "console=hvc0"
}

#[test]
fn a_queue_worker_s_forbidden_system_call_ends_the_run_by_sigsys_with_one_clear_line() {
    let r = results().step("seccomp-worker");
    // The shell reports a death by signal N as 128 + N.
    assert_eq!(r.rc, Some(128 + libc::SIGSYS), "{}", r.output);
    let line = format!(
        "rvmspawn: seccomp: thread virtio-rng (worker) made the forbidden system call {} (mount); ending by SIGSYS",
        libc::SYS_mount
    );
    assert!(r.output.contains(&line), "{}", r.output);
    // It happened while the guest ran: its kernel had started /init (which loads virtio-rng).
    assert!(
        r.output.contains("Run /init as init process"),
        "{}",
        r.output
    );
}
