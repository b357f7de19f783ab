//! virtio-blk and virtio-rng on PCI, checked from both sides: what the guest's kernel reports
//! and does (scripts/initramfs/guest-init, `rvmspawn.blk=1` / `rvmspawn.rng=1`), and what the
//! host finds in the image file afterwards.
//!
//! One batch (one test-host start). Images live in the test host's /tmp (tmpfs: Linux 6.1's
//! refuses O_DIRECT, so rvmspawn does buffered I/O there), except in the `ext4` step: there the
//! image is on ext4 in a loop-mounted file, where rvmspawn does direct I/O, and that step also
//! kills rvmspawn with SIGKILL and crashes the file system to see what the guest's flush made
//! durable.

use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult, Results};

const T: &str = "timeout -s KILL 120";
/// Partition UUID of the root partition in the GPT test image.
const ROOT_UUID: &str = "6a9e3b52-4f0c-4c62-9d7e-3f2f5c1b8a11";

/// Shell that prepares `$IMG`, `$D/disk.raw`: 64 MiB, sparse, with a 4 KiB pattern at 0 and
/// real data from 2 MiB to 3 MiB (so a discard there has blocks to free).
const PREPARE: &str = r#"D=$(mktemp -d)
IMG=$D/disk.raw
python3 - "$D/disk.raw" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    f.truncate(64 << 20)
    f.write(bytes((i * 7 + 3) % 251 for i in range(4096)))
    f.seek(2 << 20)
    f.write(b"\xa5" * (1 << 20))
PY
echo "HOST-PATTERN-MD5=$(head -c 4096 "$D/disk.raw" | md5sum | cut -d' ' -f1)"
echo "HOST-BLOCKS-BEFORE=$(stat -c %b "$D/disk.raw")""#;

/// Shell that reports, after the VM, what the image `$IMG` holds.
const INSPECT: &str = r#"echo "HOST-WRITTEN-MD5=$(dd if="$IMG" bs=4096 skip=256 count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "HOST-PATTERN-MD5-AFTER=$(head -c 4096 "$IMG" | md5sum | cut -d' ' -f1)"
echo "HOST-BLOCKS-AFTER=$(stat -c %b "$IMG")"
python3 - "$IMG" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print("HOST-HOLE-AT-2M=%d" % (os.lseek(fd, 2 << 20, os.SEEK_HOLE) == 2 << 20))
os.lseek(fd, 2 << 20, os.SEEK_SET)
print("HOST-2M-ZERO=%d" % (os.read(fd, 1 << 20) == bytes(1 << 20)))
PY"#;

/// Shell that makes an ext4 file system in `$D/fs.img` and mounts it on `$D/m`, with a journal
/// committed only on request (`commit=600`), so that only what fdatasync committed outlives
/// [`EXT4_CRASH`]. The test host's kernel has loop and ext4 as modules, loaded from the
/// unpacked kernel package (as scripts/bench-blk-inner.sh does).
const EXT4_MOUNT: &str = r#"K=$(uname -r)
for mod in loop ext4; do
    modprobe -d "$PWD/.cache/assets/extract/$K" -S "$K" $mod || exit 99
done
truncate -s 256M "$D/fs.img" && mkfs.ext4 -q -F "$D/fs.img" || exit 99
mkdir "$D/m" && mount -o loop,commit=600 "$D/fs.img" "$D/m" || exit 99"#;

/// Shell that prints how many of rvmspawn's (`$pid`) descriptors are open on `$IMG`, and how
/// many of those have O_DIRECT (040000 octal in the `flags:` of /proc/PID/fdinfo).
const DIRECT_FDS: &str = r#"fds=0 direct=0
for fd in /proc/$pid/fd/*; do
    [ "$(readlink "$fd")" = "$IMG" ] || continue
    fds=$((fds + 1))
    flags=$(awk '$1 == "flags:" { print $2 }' "/proc/$pid/fdinfo/${fd##*/}")
    [ $((0$flags & 040000)) -ne 0 ] && direct=$((direct + 1))
done
echo "HOST-IMAGE-FDS=$fds"
echo "HOST-DIRECT-FDS=$direct""#;

/// Shell that crashes the ext4 file system on `$D/m` the way a power cut would
/// (EXT4_IOC_SHUTDOWN with EXT4_GOING_FLAGS_NOLOGFLUSH: everything not yet committed to its
/// journal is lost), then mounts it again.
const EXT4_CRASH: &str = r#"python3 - "$D/m" <<'PY'
import fcntl, os, struct, sys
EXT4_IOC_SHUTDOWN = (2 << 30) | (4 << 16) | (ord("X") << 8) | 125  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
os.close(fd)
PY
echo "HOST-FS-SHUTDOWN-RC=$?"
umount "$D/m" && mount -o loop "$D/fs.img" "$D/m" || exit 98"#;

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new()
            .step(
                // Two vCPUs: one request queue each.
                "disk",
                format!(
                    r#"{PREPARE}
{T} "$RVMSPAWN" -q --qemu-smp=2 --linux="$KERNEL" --initrd="$INITRD" -i "$D/disk.raw" root=/dev/vda rvmspawn.blk=1 rvmspawn.rng=1
rc=$?
{INSPECT}
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // The image on ext4 (a file system in a file, loop-mounted, committing its
                // journal only when asked to), where rvmspawn opens it with O_DIRECT. The
                // guest's check reads the host's pattern, writes at 1 MiB (into a hole: the
                // write allocates blocks, metadata that only an fdatasync commits) and syncs,
                // then the guest waits. The host looks at rvmspawn's descriptors, kills it
                // with SIGKILL, shuts the file system down without flushing its journal (what a
                // power cut leaves), mounts it again and reads the image.
                "ext4",
                format!(
                    r#"{PREPARE}
{EXT4_MOUNT}
cp --sparse=always "$IMG" "$D/m/disk.raw" && sync "$D/m/disk.raw" || exit 99
IMG=$D/m/disk.raw
"$RVMSPAWN" -q --qemu-smp=2 --linux="$KERNEL" --initrd="$INITRD" -i "$IMG" root=/dev/vda rvmspawn.blk=1 rvmspawn.action=hang >"$D/out" 2>&1 &
pid=$!
# Wait for the guest to say it is done (its writes synced), at most 120 s.
if timeout 120 sh -c "until grep -q '^RVMSPAWN-BLK-DONE' '$D/out'; do kill -0 $pid || exit 1; sleep 0.1; done"; then
    echo "HOST-GUEST-DONE=1"
fi
{DIRECT_FDS}
kill -KILL $pid
wait $pid
echo "HOST-KILL-RC=$?"
cat "$D/out"
{EXT4_CRASH}
{INSPECT}
umount "$D/m"
rm -rf "$D"
exit 0"#
                ),
            )
            .step(
                // A file rvmspawn cannot open for writing (a read-only mount: root ignores
                // file modes) is given to the guest read-only.
                "readonly",
                format!(
                    r#"{PREPARE}
mkdir "$D/ro" && mount --bind "$D" "$D/ro" && mount -o remount,bind,ro "$D/ro" || exit 99
{T} "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -i "$D/ro/disk.raw" root=/dev/vda rvmspawn.blk=1
rc=$?
umount "$D/ro"
{INSPECT}
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // While one VM runs on an image, a second one must not get it.
                "locked",
                format!(
                    r#"{PREPARE}
"$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -i "$D/disk.raw" root=/dev/vda rvmspawn.action=hang >"$D/first" 2>&1 &
first=$!
i=0
until grep -q '^RVMSPAWN-GUEST-INIT' "$D/first" || [ $i -ge 1200 ] || ! kill -0 $first 2>/dev/null; do sleep 0.1; i=$((i+1)); done
echo "HOST-FIRST-BOOTED=$(grep -c '^RVMSPAWN-GUEST-INIT' "$D/first")"
{T} "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -i "$D/disk.raw" root=/dev/vda
echo "HOST-SECOND-RC=$?"
kill -TERM $first
wait $first
rc=$?
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // A GPT image with a root partition: a direct kernel boot is told where root
                // is, as vmspawn does.
                "gpt",
                format!(
                    r#"D=$(mktemp -d)
truncate -s 32M "$D/gpt.raw"
printf 'label: gpt\nstart=2048, size=20480, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, uuid={ROOT_UUID}\n' | sfdisk -q "$D/gpt.raw" || exit 99
{T} "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -i "$D/gpt.raw"
rc=$?
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // --extra-drive, -G and --discard-disk: run 1 with discard off (the root image
                // grown to 6 MiB first), run 2 with the default.
                "disk-options",
                format!(
                    r#"D=$(mktemp -d)
truncate -s 4M "$D/root.raw"
truncate -s 3M "$D/extra.raw"
echo HOST-RUN=1
{T} "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -i "$D/root.raw" -G 6M \
    --extra-drive="$D/extra.raw" --discard-disk=no root=/dev/vda rvmspawn.disks=1 || exit $?
echo "HOST-ROOT-SIZE=$(stat -c %s "$D/root.raw")"
echo HOST-RUN=2
{T} "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -i "$D/root.raw" \
    --extra-drive="raw:$D/extra.raw" root=/dev/vda rvmspawn.disks=1
rc=$?
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // No partition table and no root= of the user's: refused, like vmspawn.
                "nogpt",
                format!(
                    r#"D=$(mktemp -d)
truncate -s 8M "$D/plain.raw"
{T} "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -i "$D/plain.raw"
rc=$?
rm -rf "$D"
exit $rc"#
                ),
            )
            .run()
    })
}

#[test]
fn extra_drives_grow_image_and_discard_disk_in_a_real_guest() {
    let r = results().step("disk-options");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    let (run1, run2) = r
        .output
        .split_once("HOST-RUN=2")
        .unwrap_or_else(|| panic!("{}", r.output));
    let disks = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim_end().strip_prefix("RVMSPAWN-DISK="))
            .map(str::to_owned)
            .collect()
    };
    // NAME SECTORS DISCARD_MAX_BYTES RO: the grown root (6 MiB), the extra drive (3 MiB).
    assert_eq!(
        disks(run1),
        ["vda 12288 0 0", "vdb 6144 0 0"],
        "--discard-disk=no\n{}",
        r.output
    );
    expect(r, "HOST-ROOT-SIZE", "6291456");
    let with = disks(run2);
    assert_eq!(with.len(), 2, "{}", r.output);
    for d in &with {
        let f: Vec<&str> = d.split(' ').collect();
        assert!(f[2].parse::<u64>().unwrap_or(0) > 0, "discard offered: {d}");
    }
}

fn expect(r: &BootResult, key: &str, want: &str) {
    assert_eq!(r.value(key), Some(want), "{key}:\n{}", r.output);
}

/// md5 of "RVMSPAWN-GUEST-WROTE-BLOCK-4096\n" x 128, what the guest writes at 1 MiB.
const GUEST_PATTERN_MD5: &str = "f9c2e8749af18775462e61b6d0be9688";

#[test]
fn guest_sees_a_virtio_disk_of_the_image_size() {
    let r = results().step("disk");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    expect(r, "RVMSPAWN-BLK-DEVICE", "vda");
    expect(r, "RVMSPAWN-BLK-SECTORS", &(64u64 * 2048).to_string());
    expect(r, "RVMSPAWN-BLK-RO", "0");
    // vmspawn's serial: the image's file name.
    expect(r, "RVMSPAWN-BLK-SERIAL", "disk.raw");
    expect(r, "RVMSPAWN-BLK-QUEUES", "2");
    expect(r, "RVMSPAWN-BLK-LOGICAL-BLOCK-SIZE", "512");
    let discard: u64 = r
        .value("RVMSPAWN-BLK-DISCARD-MAX-BYTES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(discard > 0, "discard is offered on tmpfs:\n{}", r.output);
}

#[test]
fn guest_reads_host_data_and_its_writes_land_in_the_file() {
    let r = results().step("disk");
    let host = r.value("HOST-PATTERN-MD5").expect("host pattern md5");
    expect(r, "RVMSPAWN-BLK-READ-MD5", host);
    expect(r, "RVMSPAWN-BLK-WRITE", "ok");
    expect(r, "RVMSPAWN-BLK-READBACK-MD5", GUEST_PATTERN_MD5);
    // After the VM is gone, the file holds what the guest wrote and synced.
    expect(r, "HOST-WRITTEN-MD5", GUEST_PATTERN_MD5);
}

#[test]
fn discard_punches_holes_in_the_file() {
    let r = results().step("disk");
    expect(r, "RVMSPAWN-BLK-DISCARD", "ok");
    expect(r, "HOST-HOLE-AT-2M", "1");
    expect(r, "HOST-2M-ZERO", "1");
    let blocks = |k| -> u64 { r.value(k).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // 1 MiB freed (2048 blocks of 512 bytes), 4 KiB written.
    assert!(
        blocks("HOST-BLOCKS-AFTER") + 2000 <= blocks("HOST-BLOCKS-BEFORE") + 8,
        "{}",
        r.output
    );
}

#[test]
fn hwrng_is_virtio() {
    let r = results().step("disk");
    expect(r, "RVMSPAWN-RNG-CURRENT", "virtio_rng.0");
    expect(r, "RVMSPAWN-RNG-BYTES", "64");
}

#[test]
fn read_only_image_refuses_guest_writes() {
    let r = results().step("readonly");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    expect(r, "RVMSPAWN-BLK-RO", "1");
    let host = r.value("HOST-PATTERN-MD5").expect("host pattern md5");
    expect(r, "RVMSPAWN-BLK-READ-MD5", host);
    expect(r, "RVMSPAWN-BLK-WRITE", "fail");
    assert_ne!(r.value("RVMSPAWN-BLK-DISCARD"), Some("ok"), "{}", r.output);
    expect(r, "HOST-PATTERN-MD5-AFTER", host);
    assert_ne!(r.value("HOST-WRITTEN-MD5"), Some(GUEST_PATTERN_MD5));
}

#[test]
fn an_image_in_use_is_refused() {
    let r = results().step("locked");
    // The first VM was running (its guest reached /init) when the second one started.
    expect(r, "HOST-FIRST-BOOTED", "1");
    // EBUSY, with a message naming the image.
    expect(r, "HOST-SECOND-RC", "16");
    assert!(
        r.output.contains("disk.raw is in use by another process"),
        "{}",
        r.output
    );
    assert_eq!(r.rc, Some(0), "the first VM ends cleanly on SIGTERM");
}

#[test]
fn root_partition_goes_on_the_kernel_command_line() {
    let r = results().step("gpt");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    let cmdline = r
        .value("RVMSPAWN-CMDLINE")
        .expect("guest printed its cmdline");
    assert!(
        cmdline.contains(&format!("root=PARTUUID={ROOT_UUID}")),
        "{cmdline}"
    );
}

#[test]
fn image_without_root_partition_is_refused() {
    let r = results().step("nogpt");
    // ENOPKG, as vmspawn's image dissection reports an image without a partition table.
    assert_eq!(r.rc, Some(65), "ENOPKG:\n{}", r.output);
    assert!(r.output.contains("no GPT partition table"), "{}", r.output);
    assert_eq!(r.count_lines("RVMSPAWN-GUEST-INIT"), 0);
}

#[test]
fn on_ext4_the_guest_gets_its_data_through_o_direct() {
    let r = results().step("ext4");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    expect(r, "HOST-GUEST-DONE", "1");
    let count = |k| -> u32 { r.value(k).and_then(|v| v.parse().ok()).unwrap_or(0) };
    assert!(count("HOST-IMAGE-FDS") >= 1, "{}", r.output);
    assert!(
        count("HOST-DIRECT-FDS") >= 1,
        "rvmspawn has no O_DIRECT descriptor of the image on ext4:\n{}",
        r.output
    );
    // Direct I/O does not change what the guest is told: 512-byte sectors.
    expect(r, "RVMSPAWN-BLK-LOGICAL-BLOCK-SIZE", "512");
    let host = r.value("HOST-PATTERN-MD5").expect("host pattern md5");
    expect(r, "RVMSPAWN-BLK-READ-MD5", host);
    expect(r, "RVMSPAWN-BLK-WRITE", "ok");
    expect(r, "RVMSPAWN-BLK-READBACK-MD5", GUEST_PATTERN_MD5);
    expect(r, "RVMSPAWN-BLK-DISCARD", "ok");
}

#[test]
fn data_the_guest_flushed_survives_sigkill_and_a_file_system_crash() {
    let r = results().step("ext4");
    expect(r, "HOST-GUEST-DONE", "1");
    // rvmspawn was running when it was killed.
    expect(r, "HOST-KILL-RC", "137");
    expect(r, "HOST-FS-SHUTDOWN-RC", "0");
    // The guest's fsync on /dev/vda was a flush request, and that was an fdatasync: its write
    // at 1 MiB (into a hole) is in the file after the crash, next to the host's pattern.
    expect(r, "HOST-WRITTEN-MD5", GUEST_PATTERN_MD5);
    let host = r.value("HOST-PATTERN-MD5").expect("host pattern md5");
    expect(r, "HOST-PATTERN-MD5-AFTER", host);
}
