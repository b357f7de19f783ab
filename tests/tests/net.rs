//! The guest's network, checked from both sides: `--network-tap` (vhost-net, and rvmspawn's
//! own virtio-net with vhost-net out of sight) and `--network-user-mode` (passt).
//!
//! In the test host (root, with `/dev/net/tun` and `/dev/vhost-net`) the host side of each run
//! plays systemd-networkd: it waits for rvmspawn's `vt-NAME` link, gives it an address and
//! brings it up. The guest (`scripts/initramfs/guest-init`) configures its NIC as the command
//! line says, prints its MAC, driver and queues, pings the host and moves 64 MiB each way over
//! TCP with the guest program's checksummed stream (`guest-tools/`); the host side runs the
//! same program.

use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult, Results, STREAM_64M, assert_streams_intact};

/// Shell functions for the host side. `wait_link NAME`: until the link exists (bounded);
/// `host_end NAME ADDR/PREFIX`: address it and bring it up, as networkd would; `vt_links`: how
/// many `vt-*` links exist; `gone PID`: whether the process has ended (not even a zombie).
const HOST: &str = r#"G=$(dirname "$INITRD")/rvmspawn-guest; D=$(mktemp -d)
# wait_link NAME PID and wait_line FILE PATTERN PID give up when PID has ended.
wait_link() { i=0; until [ -e "/sys/class/net/$1" ] || [ $i -ge 600 ] || ! kill -0 "$2" 2>/dev/null; do sleep 0.1; i=$((i+1)); done; }
host_end() { ip addr add "$2" dev "$1" && ip link set "$1" up; }
vt_links() { ls /sys/class/net | grep -c '^vt-'; }
gone() { [ -n "$1" ] && { ! [ -d "/proc/$1" ] || grep -q '^State:.*Z' "/proc/$1/status"; }; }
wait_gone() { i=0; until [ -z "$1" ] || gone "$1" || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done; }
wait_line() { i=0; until grep -q "$2" "$1" || [ $i -ge 600 ] || ! kill -0 "$3" 2>/dev/null; do sleep 0.5; i=$((i+1)); done; }
echo "HOST-MACHINE-ID=$(cat /etc/machine-id)"
# Bookworm's passt needs an interface with a default route (newer ones have a local mode); the
# test host has none, so it gets one on a veth pair (its kernel has no dummy links), as a host
# with a network would have.
if [ -z "$(ip route show default)" ]; then
    ip link add rvmext0 type veth peer name rvmext1 && ip addr add 192.0.2.1/24 dev rvmext0 &&
        ip link set rvmext1 up && ip link set rvmext0 up &&
        ip route add default via 192.0.2.254 dev rvmext0
fi
"#;

/// `$NO_VHOST CMD...` runs CMD in a mount namespace whose `/dev` has `kvm`, `null`, `zero`,
/// `urandom` and `net/tun` but no vhost devices, so rvmspawn serves the NIC itself. It execs,
/// so the PID of `$NO_VHOST rvmspawn` is rvmspawn's.
const NO_VHOST: &str =
    rvmspawn_tests::no_vhost_sh!("mkdir /dev/net\nmknod -m 666 /dev/net/tun c 10 200\n");

/// The TAP transfer, guest 10.77.N.2 and host 10.77.N.1 on `vt-$NAME`, run as `$VM_CMD` in the
/// background: the guest pings the host, receives 64 MiB on port 5000 and sends 64 MiB to the
/// host's port 5001.
const TAP_TRANSFER: &str = r#"wait_link "vt-$NAME" $vm
host_end "vt-$NAME" "10.77.$N.1/24"
"$G" stream-recv --tcp-listen "10.77.$N.1:5001" --bytes 64M --timeout 200 >"$D/r" 2>&1 &
r=$!
wait_line "$D/vm" '^RVMSPAWN-STREAM-LISTENING=' $vm
"$G" stream-send --tcp "10.77.$N.2:5000" --bytes 64M --seed 2 --timeout 150 >"$D/s" 2>&1
wait $vm
rc=$?
# The guest's sender waits for the receiver to close, so a receiver still running has nothing
# more coming.
kill $r 2>/dev/null
wait
cat "$D/vm"
sed 's/^/HOST-/' "$D/r" "$D/s"
echo "VT-LINKS-AFTER=$(vt_links)"
rm -rf "$D"
exit $rc"#;

/// The guest's side of [`TAP_TRANSFER`].
const GUEST_TRANSFER: &str = "rvmspawn.net=static:10.77.$N.2/24 rvmspawn.ping=10.77.$N.1 \
     rvmspawn.tcp-recv=5000:64M rvmspawn.tcp-send=10.77.$N.1:5001:64M";

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new()
            .timeout_secs(1500)
            .step(
                "tap-vhost",
                format!(
                    r#"{HOST}NAME=nettap N=1
timeout -s KILL 280 "$RVMSPAWN" -n -M $NAME --qemu-vsock=no --qemu-mem=512M \
    --linux="$KERNEL" --initrd="$INITRD" {GUEST_TRANSFER} >"$D/vm" 2>&1 &
vm=$!
{TAP_TRANSFER}"#
                ),
            )
            .step(
                // vhost-net hidden: rvmspawn's device, one queue pair per vCPU.
                "tap-userspace",
                format!(
                    r#"{HOST}{NO_VHOST}NAME=netuser N=2
timeout -s KILL 280 $NO_VHOST "$RVMSPAWN" -n -M $NAME --qemu-vsock=no --qemu-mem=512M \
    --qemu-smp=2 --linux="$KERNEL" --initrd="$INITRD" {GUEST_TRANSFER} >"$D/vm" 2>&1 &
vm=$!
{TAP_TRANSFER}"#
                ),
            )
            .step(
                // Two VMs at once, one with the MAC from the environment, one with a name too
                // long for an interface. Each guest pings until its host end is up, which the
                // host does only once both links exist: both run at the same time.
                "two-vms",
                format!(
                    r#"{HOST}SYSTEMD_VMSPAWN_NETWORK_MAC=02:11:22:33:44:55 timeout -s KILL 200 "$RVMSPAWN" -n \
    -M netmac --qemu-vsock=no --qemu-mem=256M --linux="$KERNEL" --initrd="$INITRD" \
    rvmspawn.net=static:10.77.3.2/24 rvmspawn.ping=10.77.3.1 >"$D/a" 2>&1 &
a=$!
# The second starts once the first waits for its host end (booting both at once has wedged the
# emulated test host).
wait_line "$D/a" '^RVMSPAWN-NET-MAC=' $a
timeout -s KILL 200 "$RVMSPAWN" -n -M averyveryverylongmachine --qemu-vsock=no --qemu-mem=256M \
    --linux="$KERNEL" --initrd="$INITRD" \
    rvmspawn.net=static:10.77.4.2/24 rvmspawn.ping=10.77.4.1 >"$D/b" 2>&1 &
b=$!
wait_link vt-averyverexXi $b
wait_line "$D/b" '^RVMSPAWN-NET-MAC=' $b
echo "LINKS-WHILE-BOTH=$(ls /sys/class/net | grep '^vt-' | sort | xargs)"
host_end vt-netmac 10.77.3.1/24
host_end vt-averyverexXi 10.77.4.1/24
wait $a; ra=$?
wait $b; rb=$?
sed 's/^/A-/' "$D/a"; sed 's/^/B-/' "$D/b"
echo "RC-A=$ra"
echo "RC-B=$rb"
echo "VT-LINKS-AFTER=$(vt_links)"
rm -rf "$D""#
                ),
            )
            .step(
                // A reboot keeps the TAP and the MAC; SIGTERM then SIGKILL leave no TAP. SIGTERM
                // stops at once ($RVMSPAWN_STOP_TIMEOUT=0): this step is about the TAP, and the
                // stop batch tests the button.
                "reboot-and-signals",
                format!(
                    r#"{HOST}RVMSPAWN_STOP_TIMEOUT=0 "$RVMSPAWN" -n -M netreboot --qemu-vsock=no --qemu-mem=256M \
    --linux="$KERNEL" --initrd="$INITRD" rvmspawn.net=static:10.77.5.2/24 rvmspawn.action=reboot >"$D/vm" 2>&1 &
vm=$!
i=0
while [ "$(grep -c '^RVMSPAWN-NET-MAC=' "$D/vm")" -lt 2 ] && [ $i -lt 400 ] && kill -0 $vm 2>/dev/null; do sleep 0.5; i=$((i+1)); done
echo "LINK-BEFORE-TERM=$(ls /sys/class/net | grep -c '^vt-netreboot$')"
kill -TERM $vm
wait $vm
echo "RC-TERM=$?"
echo "VT-LINKS-AFTER-TERM=$(vt_links)"
cat "$D/vm"
"$RVMSPAWN" -n -M netkill --qemu-vsock=no --qemu-mem=256M --linux="$KERNEL" \
    --initrd="$INITRD" rvmspawn.net=static:10.77.6.2/24 rvmspawn.action=hang >"$D/k" 2>&1 &
k=$!
wait_line "$D/k" '^RVMSPAWN-NET-MAC=' $k
echo "LINK-BEFORE-KILL=$(ls /sys/class/net | grep -c '^vt-netkill$')"
kill -KILL $k
wait $k
echo "RC-KILL=$?"
echo "VT-LINKS-AFTER-KILL=$(vt_links)"
rm -rf "$D""#
                ),
            )
            .step(
                // A name in use and a missing CAP_NET_ADMIN are refused with their errno.
                "tap-refusals",
                format!(
                    r#"{HOST}ip link add vt-netbusy type veth peer name netbusy1
"$RVMSPAWN" -n -M netbusy --qemu-vsock=no --linux="$KERNEL" --initrd="$INITRD" >"$D/busy" 2>&1
echo "RC-BUSY=$?"
ip link del vt-netbusy
sed 's/^/BUSY: /' "$D/busy"
setpriv --bounding-set=-net_admin --inh-caps=-net_admin -- "$RVMSPAWN" -n -M netcap \
    --qemu-vsock=no --linux="$KERNEL" --initrd="$INITRD" >"$D/cap" 2>&1
echo "RC-NOCAP=$?"
sed 's/^/NOCAP: /' "$D/cap"
echo "VT-LINKS-AFTER=$(vt_links)"
rm -rf "$D""#
                ),
            )
            .step(
                // passt: DHCP gives slirp's addresses; the guest reaches a server on the test
                // host's loopback through the gateway; an oversized frame first does not cost
                // it its network.
                "passt",
                format!(
                    r#"{HOST}"$G" stream-recv --tcp-listen 127.0.0.1:5001 --bytes 64M --timeout 200 >"$D/r" 2>&1 &
r=$!
timeout -s KILL 280 "$RVMSPAWN" --network-user-mode -M netpasst --qemu-vsock=no --qemu-mem=512M \
    --linux="$KERNEL" --initrd="$INITRD" rvmspawn.net=dhcp rvmspawn.bigframe=10.0.2.2 \
    rvmspawn.tcp-send=10.0.2.2:5001:64M >"$D/vm" 2>&1
rc=$?
kill $r 2>/dev/null
wait
cat "$D/vm"
sed 's/^/HOST-/' "$D/r"
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // passt's death ends the run with a message; SIGKILL of rvmspawn takes passt
                // with it; a missing passt is an error naming the package.
                "passt-lifecycle",
                format!(
                    r#"{HOST}"$RVMSPAWN" --network-user-mode -M netpk --qemu-vsock=no --qemu-mem=256M \
    --linux="$KERNEL" --initrd="$INITRD" rvmspawn.net=dhcp rvmspawn.action=hang >"$D/vm" 2>&1 &
vm=$!
wait_line "$D/vm" '^RVMSPAWN-NET-ADDR=' $vm
p=$(pgrep -P $vm passt)
echo "PASST-PID=$p"
[ -n "$p" ] && kill -KILL $p || kill -KILL $vm
wait $vm
echo "RC-PASST-KILLED=$?"
sed 's/^/PK: /' "$D/vm"
"$RVMSPAWN" --network-user-mode -M netrk --qemu-vsock=no --qemu-mem=256M \
    --linux="$KERNEL" --initrd="$INITRD" rvmspawn.net=dhcp rvmspawn.action=hang >"$D/k" 2>&1 &
k=$!
wait_line "$D/k" '^RVMSPAWN-NET-ADDR=' $k
p=$(pgrep -P $k passt)
echo "PASST2-PID=$p"
kill -KILL $k
wait $k
wait_gone "$p"
gone "$p" && echo "PASST-AFTER-SIGKILL=gone" || echo "PASST-AFTER-SIGKILL=running"
unshare -m sh -c 'mount --bind /dev/null /usr/bin/passt && PATH=/nonexistent exec "$0" "$@"' \
    "$RVMSPAWN" --network-user-mode -M netnopasst --qemu-vsock=no --linux="$KERNEL" \
    --initrd="$INITRD" >"$D/np" 2>&1
echo "RC-NO-PASST=$?"
sed 's/^/NP: /' "$D/np"
rm -rf "$D""#
                ),
            )
            .run()
    })
}

/// The machine ID the test host printed, as bytes.
fn machine_id(r: &BootResult) -> [u8; 16] {
    let hex = r.value("HOST-MACHINE-ID").expect("machine ID printed");
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex machine ID");
    }
    id
}

/// The guest reached the host, 64 MiB went each way intact, and no TAP outlived the run.
fn assert_transfer(r: &BootResult) {
    assert_eq!(r.value("RVMSPAWN-PING"), Some("ok"), "{}", r.output);
    assert_streams_intact(r);
    assert_eq!(r.rc, Some(0), "{}", r.output);
    assert_eq!(r.value("VT-LINKS-AFTER"), Some("0"), "{}", r.output);
}

#[test]
fn tap_with_vhost_net_moves_64_mib_each_way() {
    let r = results().step("tap-vhost");
    assert!(
        r.output
            .contains("Guest network: TAP vt-nettap, guest MAC ")
            && r.output.contains("served by vhost-net."),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-NET-DRIVER"),
        Some("virtio_net"),
        "{}",
        r.output
    );
    assert_eq!(r.value("RVMSPAWN-NET-QUEUES"), Some("1"), "{}", r.output);
    assert_transfer(r);
}

#[test]
fn the_guest_mac_is_derived_from_machine_id_and_name() {
    let r = results().step("tap-vhost");
    let expected = vmm::format_mac(&vmm::guest_mac(&machine_id(r), "nettap"));
    assert_eq!(
        r.value("RVMSPAWN-NET-MAC"),
        Some(expected.as_str()),
        "{}",
        r.output
    );
}

#[test]
fn tap_with_the_userspace_device_moves_64_mib_each_way_on_two_queues() {
    let r = results().step("tap-userspace");
    assert!(
        r.output
            .contains("served by rvmspawn with 2 queue pairs (no /dev/vhost-net"),
        "{}",
        r.output
    );
    assert_eq!(r.value("RVMSPAWN-NET-QUEUES"), Some("2"), "{}", r.output);
    assert_transfer(r);
}

#[test]
fn two_vms_get_their_own_taps_macs_and_shortened_names() {
    let r = results().step("two-vms");
    assert_eq!(
        r.value("LINKS-WHILE-BOTH"),
        Some("vt-averyverexXi vt-netmac"),
        "{}",
        r.output
    );
    assert!(
        r.output.contains(
            "B-Network interface name 'vt-averyveryverylongmachine' has been changed to \
             'vt-averyverexXi' to fit length constraints."
        ),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("A-RVMSPAWN-NET-MAC"),
        Some("02:11:22:33:44:55"),
        "{}",
        r.output
    );
    let derived = vmm::format_mac(&vmm::guest_mac(&machine_id(r), "averyveryverylongmachine"));
    assert_eq!(
        r.value("B-RVMSPAWN-NET-MAC"),
        Some(derived.as_str()),
        "{}",
        r.output
    );
    assert_eq!(r.value("A-RVMSPAWN-PING"), Some("ok"), "{}", r.output);
    assert_eq!(r.value("B-RVMSPAWN-PING"), Some("ok"), "{}", r.output);
    assert_eq!(r.value("RC-A"), Some("0"), "{}", r.output);
    assert_eq!(r.value("RC-B"), Some("0"), "{}", r.output);
    assert_eq!(r.value("VT-LINKS-AFTER"), Some("0"), "{}", r.output);
}

#[test]
fn a_reboot_keeps_the_mac_and_no_tap_survives_sigterm_or_sigkill() {
    let r = results().step("reboot-and-signals");
    // The guest reboots until SIGTERM, which (with no graceful stop) ends the VM at once: it
    // may have started one more boot by then.
    let macs = r.values("RVMSPAWN-NET-MAC");
    assert!(macs.len() >= 2, "{}", r.output);
    assert!(
        macs.iter().all(|m| *m == macs[0]),
        "the same MAC after every reboot: {}",
        r.output
    );
    assert!(
        !r.output.contains("Asking the guest to power off"),
        "{}",
        r.output
    );
    assert_eq!(r.value("LINK-BEFORE-TERM"), Some("1"), "{}", r.output);
    assert_eq!(r.value("RC-TERM"), Some("0"), "{}", r.output);
    assert_eq!(r.value("VT-LINKS-AFTER-TERM"), Some("0"), "{}", r.output);
    assert_eq!(r.value("LINK-BEFORE-KILL"), Some("1"), "{}", r.output);
    assert_eq!(r.value("RC-KILL"), Some("137"), "{}", r.output);
    assert_eq!(r.value("VT-LINKS-AFTER-KILL"), Some("0"), "{}", r.output);
}

#[test]
fn a_busy_name_and_no_cap_net_admin_are_refused_with_their_errno() {
    let r = results().step("tap-refusals");
    assert_eq!(r.value("RC-BUSY"), Some("16"), "{}", r.output);
    assert!(
        r.output
            .contains("BUSY: rvmspawn: network interface vt-netbusy already exists"),
        "{}",
        r.output
    );
    assert_eq!(r.value("RC-NOCAP"), Some("1"), "{}", r.output);
    assert!(
        r.output
            .contains("NOCAP: rvmspawn: --network-tap requires root privileges, refusing."),
        "{}",
        r.output
    );
    assert_eq!(r.value("VT-LINKS-AFTER"), Some("0"), "{}", r.output);
}

#[test]
fn passt_gives_slirps_addresses_and_reaches_the_hosts_loopback() {
    let r = results().step("passt");
    assert!(
        r.output.contains("Guest network: user mode through passt"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-NET-ADDR"),
        Some("10.0.2.15/24"),
        "{}",
        r.output
    );
    assert_eq!(r.value("RVMSPAWN-NET-GW"), Some("10.0.2.2"), "{}", r.output);
    assert_eq!(
        r.value("RVMSPAWN-NET-DNS"),
        Some("10.0.2.3"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-NET-MAC"),
        Some("52:54:00:12:34:56"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-STREAM-SENT"),
        Some(STREAM_64M),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("HOST-RVMSPAWN-STREAM-RECV"),
        Some(STREAM_64M),
        "{}",
        r.output
    );
    assert_eq!(r.rc, Some(0), "{}", r.output);
}

#[test]
fn an_oversized_guest_frame_does_not_cost_the_guest_its_network() {
    let r = results().step("passt");
    // 65553 bytes (past the device's transmit limit) and 65538 (past the stream framing's 65535
    // only: the stream back end drops it, which `stream.rs`'s unit tests prove byte for byte;
    // bookworm's passt would survive it anyway, newer ones reset the connection and exit).
    assert_eq!(r.value("RVMSPAWN-BIGFRAME"), Some("sent"), "{}", r.output);
    assert_eq!(
        r.value("RVMSPAWN-BIGFRAME-BYTES"),
        Some("65553 65538"),
        "{}",
        r.output
    );
    // The transfer after it went through the same passt.
    assert_eq!(
        r.value("HOST-RVMSPAWN-STREAM-RECV"),
        Some(STREAM_64M),
        "{}",
        r.output
    );
}

#[test]
fn passts_death_ends_the_run_and_passt_dies_with_rvmspawn() {
    let r = results().step("passt-lifecycle");
    assert!(
        r.value("PASST-PID").is_some_and(|p| !p.is_empty()),
        "{}",
        r.output
    );
    assert_eq!(r.value("RC-PASST-KILLED"), Some("71"), "{}", r.output);
    assert!(
        r.output.lines().any(
            |l| l.starts_with("PK: rvmspawn: passt was killed by signal 9")
                && l.ends_with("; stopping the VM")
        ),
        "{}",
        r.output
    );
    assert!(
        r.value("PASST2-PID").is_some_and(|p| !p.is_empty()),
        "{}",
        r.output
    );
    assert_eq!(r.value("PASST-AFTER-SIGKILL"), Some("gone"), "{}", r.output);
}

#[test]
fn a_missing_passt_is_an_error_naming_the_package() {
    let r = results().step("passt-lifecycle");
    assert_eq!(r.value("RC-NO-PASST"), Some("2"), "{}", r.output);
    assert!(
        r.output
            .contains("NP: rvmspawn: Failed to find passt binary")
            && r.output.contains("package: passt"),
        "{}",
        r.output
    );
}
