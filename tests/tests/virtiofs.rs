//! virtio-fs through virtiofsd: `--directory=` as the guest's root, `--bind=`/`--bind-ro=` and
//! `--private-users=`, checked from both sides. The test builds a busybox tree whose
//! `/sbin/init` prints what it sees and writes files; the guest initramfs mounts the `root` tag
//! and the `fstab.extra` credential's lines and switches to it (scripts/initramfs/guest-init).
//! And rvmspawn's helper duties: virtiofsd killed ends the run with an error; rvmspawn killed
//! takes virtiofsd with it; no virtiofsd process or socket is left in any case.

use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult, Results};

/// Shell functions for the steps. `tree UID` builds a busybox tree in `$D/root`, owned by UID,
/// whose `/sbin/init` reports `RVMSPAWN-ROOT-*`, `RVMSPAWN-MOUNT=TAG WHERE RW` and
/// `RVMSPAWN-BIND-*` lines, then powers off, or hangs with `rvmspawn.tree=hang`. `processes_below
/// virtiofsd PID` (`rvmspawn_tests::processes_below_sh`) lists the virtiofsd processes below PID
/// (its children and theirs, from `/proc/PID/task/*/children`). `ours` counts the processes that
/// have this step's own directory `$D` on their command line (its virtiofsd instances:
/// `--shared-dir $D/...`), so no other test's or user's processes count; `wait_ours_gone` waits up
/// to 5 s for none to be left (a killed process is gone once reaped); `left` prints how many of
/// those and of rvmspawn's virtiofs sockets exist.
const TREE: &str = concat!(
    rvmspawn_tests::processes_below_sh!(),
    r#"D=$(mktemp -d)
tree() {
    mkdir -p "$D/root/bin" "$D/root/sbin" "$D/root/proc" "$D/root/dev" "$D/root/sys"
    cp /bin/busybox "$D/root/bin/busybox"
    for a in sh mount umount grep cat sync stat id sleep poweroff; do
        ln -s busybox "$D/root/bin/$a"
    done
    cat >"$D/root/sbin/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo "RVMSPAWN-ROOT-INIT=ok"
echo "RVMSPAWN-ROOT-UID=$(id -u)"
echo "RVMSPAWN-ROOT-OWNER=$(stat -c %u /sbin/init)"
echo "RVMSPAWN-ROOT-CMDLINE=$(cat /proc/cmdline)"
if echo "written by the guest" >/guest-wrote && sync; then
    echo "RVMSPAWN-ROOT-WRITE=ok"
else
    echo "RVMSPAWN-ROOT-WRITE=fail"
fi
grep ' virtiofs ' /proc/mounts | while read -r what where type opts rest; do
    echo "RVMSPAWN-MOUNT=$what $where ${opts%%,*}"
done
if [ -d /rw ]; then
    if echo from-guest >/rw/from-guest && sync; then
        echo "RVMSPAWN-BIND-RW-WRITE=ok"
    else
        echo "RVMSPAWN-BIND-RW-WRITE=fail"
    fi
fi
if [ -d /ro ]; then
    echo "RVMSPAWN-BIND-RO-READ=$(cat /ro/host-file)"
    if echo x >/ro/guest-file 2>/dev/null; then w=ok; else w=refused; fi
    echo "RVMSPAWN-BIND-RO-WRITE=$w"
    # Read-only is virtiofsd's doing, not only the mount flag's.
    if mount -o remount,rw /ro 2>/dev/null && grep -q ' /ro virtiofs rw' /proc/mounts; then
        echo "RVMSPAWN-BIND-RO-REMOUNT=rw"
    else
        echo "RVMSPAWN-BIND-RO-REMOUNT=fail"
    fi
    if echo x >/ro/guest-file 2>/dev/null; then w=ok; else w=refused; fi
    echo "RVMSPAWN-BIND-RO-WRITE-REMOUNTED=$w"
fi
case " $(cat /proc/cmdline) " in
    *" rvmspawn.tree=hang "*)
        echo "RVMSPAWN-TREE-HANG"
        while :; do sleep 3600; done ;;
esac
poweroff -f
INIT
    chmod 755 "$D/root/sbin/init"
    chown -R "$1:$1" "$D/root"
}
ours() {
    # "[/]" so that grep's own command line, also in /proc, does not match.
    grep -ls "[/]${D#/}/" /proc/[0-9]*/cmdline | wc -l
}
wait_ours_gone() {
    local i=0
    until [ "$(ours)" = 0 ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i+1)); done
}
left() {
    wait_ours_gone
    echo "HOST-VIRTIOFSD-LEFT=$(ours)"
    echo "HOST-SOCKETS-LEFT=$(grep -c rvmspawn-virtiofs /proc/net/unix)"
}
wait_for() { # PATTERN FILE
    i=0
    until grep -q "$1" "$2" || [ $i -ge 300 ]; do sleep 0.2; i=$((i+1)); done
}
"#
);

/// Start rvmspawn on the tree with a guest that hangs; `vm` is its PID, once the tree's init
/// runs, and `vfsd` the PIDs of its virtiofsd processes (`HOST-VIRTIOFSD-RUNNING=` says how
/// many).
const START_HANGING: &str = r#"tree 0
# The tree's init has no ACPI handler: the stop is the immediate one, not a wait for the guest.
RVMSPAWN_STOP_TIMEOUT=0 "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -D "$D/root" \
    rvmspawn.tree=hang >"$D/vm" 2>&1 &
vm=$!
wait_for RVMSPAWN-TREE-HANG "$D/vm"
vfsd=$(processes_below virtiofsd $vm)
echo "HOST-VIRTIOFSD-RUNNING=$(echo $vfsd | wc -w)"
"#;

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new()
            .step(
                "root-and-binds",
                TREE.to_owned()
                    + r#"tree 0
mkdir "$D/rw" "$D/ro"
echo host-data >"$D/ro/host-file"
timeout -s KILL 150 "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -D "$D/root" \
    --bind="$D/rw:/rw" --bind-ro="$D/ro:/ro" rvmspawn.arg=1
rc=$?
echo "HOST-GUEST-WROTE=$(cat "$D/root/guest-wrote")"
echo "HOST-RW-FROM-GUEST=$(cat "$D/rw/from-guest")"
echo "HOST-RO-ENTRIES=$(echo $(ls "$D/ro"))"
left
rm -rf "$D"
exit $rc"#,
            )
            .step(
                // No --linux=: the kernel comes from the tree's boot entries. The entry that
                // sorts first has no kernel, so only the loader.conf default can boot.
                "boot-loader-spec",
                TREE.to_owned()
                    + r#"tree 0
mkdir -p "$D/root/boot/loader/entries" "$D/root/efi/loader"
cp "$KERNEL" "$D/root/boot/vmlinuz"
cp "$INITRD" "$D/root/boot/initrd.img"
printf 'title test\nversion 1\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=/dev/sda\n' \
    >"$D/root/boot/loader/entries/test.conf"
printf 'title newer\nversion 9\nlinux /missing\n' >"$D/root/boot/loader/entries/zzz.conf"
echo 'default test*' >"$D/root/efi/loader/loader.conf"
timeout -s KILL 150 "$RVMSPAWN" -q -D "$D/root"
rc=$?
left
rm -rf "$D"
exit $rc"#,
            )
            .step(
                // -x: the guest runs from a copy beside the tree, which goes at exit.
                "ephemeral",
                TREE.to_owned()
                    + r#"tree 0
timeout -s KILL 150 "$RVMSPAWN" --linux="$KERNEL" --initrd="$INITRD" -D "$D/root" -x >"$D/vm" 2>&1
rc=$?
cat "$D/vm"
echo "HOST-TREE-HAS-GUEST-FILE=$([ -e "$D/root/guest-wrote" ] && echo yes || echo no)"
echo "HOST-COPIES-LEFT=$(ls -A "$D" | grep -c '^\.#rvmspawn-')"
left
rm -rf "$D"
exit $rc"#,
            )
            .step(
                "private-users",
                TREE.to_owned()
                    + r#"tree 100000
timeout -s KILL 150 "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -D "$D/root" \
    --private-users=100000
rc=$?
echo "HOST-GUEST-WROTE-OWNER=$(stat -c %u:%g "$D/root/guest-wrote")"
rm -rf "$D"
exit $rc"#,
            )
            .step(
                // virtiofsd dying ends the run with an error naming it.
                "virtiofsd-killed",
                TREE.to_owned()
                    + START_HANGING
                    + r#"kill -KILL $vfsd
wait $vm
rc=$?
cat "$D/vm"
left
rm -rf "$D"
exit $rc"#,
            )
            .step(
                // rvmspawn killed outright: virtiofsd goes too (its parent-death signal).
                "rvmspawn-killed",
                TREE.to_owned()
                    + START_HANGING
                    + r#"kill -KILL $vm
wait $vm
rc=$?
cat "$D/vm"
left
rm -rf "$D"
exit $rc"#,
            )
            .step(
                // SIGTERM: a normal end, helpers stopped.
                "sigterm",
                TREE.to_owned()
                    + START_HANGING
                    + r#"kill -TERM $vm
wait $vm
rc=$?
cat "$D/vm"
left
rm -rf "$D"
exit $rc"#,
            )
            .run()
    })
}

/// The tree's init ran (so the guest booted from the directory) and rvmspawn had started
/// virtiofsd for it.
fn assert_booted_from_the_tree(r: &BootResult) {
    assert_eq!(r.value("RVMSPAWN-ROOT-INIT"), Some("ok"), "{}", r.output);
    assert_eq!(r.count_lines("RVMSPAWN-TREE-HANG"), 1, "{}", r.output);
    // virtiofsd's namespace sandbox runs it as two processes.
    let running: u32 = r
        .value("HOST-VIRTIOFSD-RUNNING")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(running >= 1, "{}", r.output);
}

fn assert_nothing_left(r: &BootResult) {
    assert_eq!(r.value("HOST-VIRTIOFSD-LEFT"), Some("0"), "{}", r.output);
    assert_eq!(r.value("HOST-SOCKETS-LEFT"), Some("0"), "{}", r.output);
}

#[test]
fn the_directory_is_the_guests_root_and_its_writes_land_on_the_host() {
    let r = results().step("root-and-binds");
    assert_eq!(r.value("RVMSPAWN-ROOT-INIT"), Some("ok"), "{}", r.output);
    assert_eq!(r.value("RVMSPAWN-ROOT-UID"), Some("0"), "{}", r.output);
    // vmspawn's root arguments come after the user's.
    let cmdline = r.value("RVMSPAWN-ROOT-CMDLINE").expect("cmdline");
    assert_eq!(
        cmdline,
        "console=hvc0 rvmspawn.arg=1 root=root rootfstype=virtiofs rw"
    );
    assert_eq!(r.value("RVMSPAWN-ROOT-WRITE"), Some("ok"), "{}", r.output);
    assert_eq!(
        r.value("HOST-GUEST-WROTE"),
        Some("written by the guest"),
        "{}",
        r.output
    );
    assert_eq!(r.rc, Some(0), "{}", r.output);
    assert_nothing_left(r);
}

#[test]
fn without_linux_the_trees_default_boot_entry_boots() {
    let r = results().step("boot-loader-spec");
    assert_eq!(r.value("RVMSPAWN-ROOT-INIT"), Some("ok"), "{}", r.output);
    // vmspawn uses the entry's kernel and initrd, not its options.
    let cmdline = r.value("RVMSPAWN-ROOT-CMDLINE").expect("cmdline");
    assert_eq!(cmdline, "console=hvc0 root=root rootfstype=virtiofs rw");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    assert_nothing_left(r);
}

#[test]
fn binds_mount_where_asked_with_the_right_permission() {
    let r = results().step("root-and-binds");
    let mounts: Vec<&str> = r
        .output
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("RVMSPAWN-MOUNT="))
        .collect();
    assert_eq!(
        mounts,
        ["root / rw", "mnt0 /rw rw", "mnt1 /ro ro"],
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-BIND-RW-WRITE"),
        Some("ok"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("HOST-RW-FROM-GUEST"),
        Some("from-guest"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-BIND-RO-READ"),
        Some("host-data"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-BIND-RO-WRITE"),
        Some("refused"),
        "{}",
        r.output
    );
    // The guest may remount it read-write; virtiofsd still refuses the write.
    assert_eq!(
        r.value("RVMSPAWN-BIND-RO-REMOUNT"),
        Some("rw"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-BIND-RO-WRITE-REMOUNTED"),
        Some("refused"),
        "virtiofsd itself refuses\n{}",
        r.output
    );
    assert_eq!(
        r.value("HOST-RO-ENTRIES"),
        Some("host-file"),
        "{}",
        r.output
    );
}

#[test]
fn an_ephemeral_directory_run_leaves_the_tree_unchanged() {
    let r = results().step("ephemeral");
    // The guest ran from the copy and could write there...
    assert_eq!(r.value("RVMSPAWN-ROOT-WRITE"), Some("ok"), "{}", r.output);
    // ...which was named with vmspawn's suffix and is gone, and the tree never saw the write.
    assert!(r.output.contains("Spawning VM root-"), "{}", r.output);
    assert_eq!(
        r.value("HOST-TREE-HAS-GUEST-FILE"),
        Some("no"),
        "{}",
        r.output
    );
    assert_eq!(r.value("HOST-COPIES-LEFT"), Some("0"), "{}", r.output);
    assert_nothing_left(r);
    assert_eq!(r.rc, Some(0), "{}", r.output);
}

#[test]
fn private_users_maps_guest_root_to_the_shift() {
    let r = results().step("private-users");
    assert_eq!(r.value("RVMSPAWN-ROOT-INIT"), Some("ok"), "{}", r.output);
    // The tree belongs to host UID 100000, which the guest sees as root.
    assert_eq!(r.value("RVMSPAWN-ROOT-OWNER"), Some("0"), "{}", r.output);
    assert_eq!(r.value("RVMSPAWN-ROOT-WRITE"), Some("ok"), "{}", r.output);
    assert_eq!(
        r.value("HOST-GUEST-WROTE-OWNER"),
        Some("100000:100000"),
        "{}",
        r.output
    );
    assert_eq!(r.rc, Some(0), "{}", r.output);
}

#[test]
fn virtiofsd_dying_ends_the_run_with_an_error() {
    let r = results().step("virtiofsd-killed");
    assert_booted_from_the_tree(r);
    assert_eq!(r.rc, Some(71), "EPROTO\n{}", r.output);
    assert!(
        r.output.contains("was killed by signal 9; stopping the VM"),
        "{}",
        r.output
    );
    assert_nothing_left(r);
}

#[test]
fn killing_rvmspawn_takes_virtiofsd_with_it() {
    let r = results().step("rvmspawn-killed");
    assert_booted_from_the_tree(r);
    assert_eq!(r.rc, Some(137), "{}", r.output);
    assert_nothing_left(r);
}

#[test]
fn sigterm_stops_virtiofsd_too() {
    let r = results().step("sigterm");
    assert_booted_from_the_tree(r);
    assert_eq!(r.rc, Some(0), "{}", r.output);
    assert_nothing_left(r);
}
