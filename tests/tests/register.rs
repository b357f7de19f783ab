//! `--register=`: the VM in systemd-machined while it runs and not after. Each step starts its
//! own system bus (`dbus-daemon --system`) and, where it needs one, `systemd-machined` in the
//! test host (Debian bookworm's machined, systemd 252: it has no `RegisterMachineEx`, so
//! rvmspawn's registrar falls back to `RegisterMachineWithNetwork`, as vmspawn does), and
//! asserts on what `machinectl` itself reports. The test host has no service manager, so the
//! step puts rvmspawn in a cgroup of its own named like a scope (`rvmtest-*.scope`): machined
//! files a registered machine under its leader's unit, which it reads from the cgroup.
//! Nothing but rvmspawn's own unregistration takes the machine out of machined here (no
//! systemd tells machined that the unit is gone), so "not listed after the run" proves it.

use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult, Results};

/// Shell functions: `bus` starts a system bus, `machined` the machine manager on it (both
/// stopped by `stop_bus` through their PIDs); `in_scope NAME CMD...` becomes CMD in the cgroup
/// `NAME.scope` (so `$!` of `in_scope ... &` is CMD's PID); `wait_for PATTERN FILE` (at most 60 s).
const HELPERS: &str = r#"D=$(mktemp -d)
wait_for() { # PATTERN FILE
    i=0
    until grep -q "$1" "$2" || [ $i -ge 300 ]; do sleep 0.2; i=$((i+1)); done
}
bus() {
    # machinectl (sd_booted()) refuses to talk to the system bus unless this exists.
    mkdir -p /run/dbus /run/systemd/system
    dbus-daemon --system --nofork --nopidfile --nosyslog >"$D/dbus.log" 2>&1 &
    dbus=$!
    i=0
    until [ -S /run/dbus/system_bus_socket ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
}
has_owner() { # NAME
    busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
        NameHasOwner s "$1" 2>/dev/null
}
machined() {
    /lib/systemd/systemd-machined >"$D/machined.log" 2>&1 &
    machined=$!
    i=0
    until [ "$(has_owner org.freedesktop.machine1)" = "b true" ] || [ $i -ge 100 ]; do
        sleep 0.1
        i=$((i+1))
    done
    echo "HOST-MACHINED=$(has_owner org.freedesktop.machine1)"
}
stop_bus() {
    [ -n "${machined:-}" ] && kill "$machined" 2>/dev/null && wait "$machined" 2>/dev/null
    kill "$dbus" 2>/dev/null
    wait "$dbus" 2>/dev/null
    rm -f /run/dbus/system_bus_socket
}
in_scope() { # NAME CMD...
    mkdir -p "/sys/fs/cgroup/$1.scope"
    scope=$1
    shift
    exec sh -c 'echo $$ >"$0" && exec "$@"' "/sys/fs/cgroup/$scope.scope/cgroup.procs" "$@"
}
listed() { # what machinectl lists, one HOST-LIST-TAG= line each
    machinectl list --no-legend --no-pager 2>&1 | sed "s/^/HOST-LIST-$1=/"
    echo "HOST-LIST-$1-DONE"
}
"#;

/// The UUID the registered VM gets (`--uuid=`), as machinectl shows it.
const UUID: &str = "6c1d6e8a-6b3e-4c55-9d4b-1f0e2a3b4c5d";

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new()
            .step(
                // Registered while it runs (--register=yes must succeed), gone after SIGTERM.
                "registered",
                format!(
                    r#"{HELPERS}bus
machined
in_scope rvmtest-a "$RVMSPAWN" --register=yes -M regtest --uuid={UUID} --qemu-mem=512M \
    --linux="$KERNEL" --initrd="$INITRD" rvmspawn.action=hang >"$D/vm" 2>&1 &
vm=$!
echo "HOST-VM-PID=$vm"
wait_for RVMSPAWN-POWER-BUTTON=waiting "$D/vm"
listed RUNNING
machinectl show regtest --no-pager 2>&1 | sed 's/^/HOST-SHOW-/'
kill -TERM $vm
wait $vm
rc=$?
listed AFTER
cat "$D/vm"
stop_bus
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // SIGKILL of rvmspawn: its registrar still unregisters the machine.
                "killed",
                format!(
                    r#"{HELPERS}bus
machined
in_scope rvmtest-b "$RVMSPAWN" --register=yes -M regkill --qemu-mem=512M \
    --linux="$KERNEL" --initrd="$INITRD" rvmspawn.action=hang >"$D/vm" 2>&1 &
vm=$!
wait_for RVMSPAWN-POWER-BUTTON=waiting "$D/vm"
listed RUNNING
kill -KILL $vm
wait $vm
i=0
while machinectl list --no-legend --no-pager | grep -q regkill && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i+1))
done
listed AFTER
cat "$D/vm"
stop_bus
rm -rf "$D"
exit 0"#
                ),
            )
            .step(
                // A system bus without machined: yes fails before the guest runs, naming the
                // cause; auto boots and says it did not register.
                "no-machined",
                format!(
                    r#"{HELPERS}bus
"$RVMSPAWN" --register=yes --qemu-mem=512M --linux="$KERNEL" --initrd="$INITRD" >"$D/yes" 2>&1
echo "HOST-YES-RC=$?"
"$RVMSPAWN" --register=auto --qemu-mem=512M --linux="$KERNEL" --initrd="$INITRD" >"$D/auto" 2>&1
echo "HOST-AUTO-RC=$?"
stop_bus
# No system bus at all: auto says nothing.
"$RVMSPAWN" --qemu-mem=512M --linux="$KERNEL" --initrd="$INITRD" >"$D/nobus" 2>&1
echo "HOST-NOBUS-RC=$?"
sed 's/^/YES: /' "$D/yes"
sed 's/^/AUTO: /' "$D/auto"
sed 's/^/NOBUS: /' "$D/nobus"
rm -rf "$D"
exit 0"#
                ),
            )
            .run()
    })
}

/// The `HOST-LIST-TAG=` lines (machinectl's rows).
fn listed<'a>(r: &'a BootResult, tag: &str) -> Vec<&'a str> {
    assert!(
        r.output.contains(&format!("HOST-LIST-{tag}-DONE")),
        "{tag}\n{}",
        r.output
    );
    let prefix = format!("HOST-LIST-{tag}=");
    r.output
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn machinectl_lists_the_vm_while_it_runs_and_not_after() {
    let r = results().step("registered");
    assert_eq!(r.value("HOST-MACHINED"), Some("b true"), "{}", r.output);
    let running = listed(r, "RUNNING");
    assert!(
        running.iter().any(|l| l
            .split_whitespace()
            .take(3)
            .eq(["regtest", "vm", "rvmspawn"])),
        "{running:?}\n{}",
        r.output
    );
    // What machined recorded: the name, the UUID, the class, rvmspawn as the leader, and the
    // unit it runs in (its cgroup).
    let show = |k: &str| r.value(&format!("HOST-SHOW-{k}"));
    assert_eq!(show("Name"), Some("regtest"), "{}", r.output);
    assert_eq!(
        show("Id"),
        Some(UUID.replace('-', "").as_str()),
        "{}",
        r.output
    );
    assert_eq!(show("Class"), Some("vm"), "{}", r.output);
    assert_eq!(show("Service"), Some("rvmspawn"), "{}", r.output);
    assert_eq!(show("Leader"), r.value("HOST-VM-PID"), "{}", r.output);
    assert_eq!(show("Unit"), Some("rvmtest-a.scope"), "{}", r.output);
    assert_eq!(listed(r, "AFTER"), Vec::<&str>::new(), "{}", r.output);
    assert_eq!(r.rc, Some(0), "{}", r.output);
}

#[test]
fn a_killed_rvmspawn_is_unregistered_by_its_registrar() {
    let r = results().step("killed");
    let running = listed(r, "RUNNING");
    assert!(
        running.iter().any(|l| l.starts_with("regkill ")),
        "{running:?}\n{}",
        r.output
    );
    assert_eq!(listed(r, "AFTER"), Vec::<&str>::new(), "{}", r.output);
}

#[test]
fn register_yes_without_machined_fails_and_auto_goes_on() {
    let r = results().step("no-machined");
    let lines =
        |p: &str| -> Vec<&str> { r.output.lines().filter_map(|l| l.strip_prefix(p)).collect() };
    let yes = lines("YES: ");
    // EIO: Debian's bus failing to start the missing machined (Spawn.ChildExited), which
    // sd-bus maps to no errno of its own.
    assert_eq!(r.value("HOST-YES-RC"), Some("5"), "{}", r.output);
    assert!(
        yes.iter()
            .any(|l| l.starts_with("rvmspawn: Failed to register machine with systemd-machined: ")),
        "{yes:?}"
    );
    // The guest never ran.
    assert!(
        !yes.iter().any(|l| l.contains("RVMSPAWN-GUEST-INIT")),
        "{yes:?}"
    );
    let auto = lines("AUTO: ");
    assert_eq!(r.value("HOST-AUTO-RC"), Some("0"), "{}", r.output);
    assert!(
        auto.iter()
            .any(|l| l.starts_with("Failed to register machine with systemd-machined, ignoring: ")),
        "{auto:?}"
    );
    assert!(
        auto.iter().any(|l| l.contains("RVMSPAWN-GUEST-INIT")),
        "{auto:?}"
    );
    let nobus = lines("NOBUS: ");
    assert_eq!(r.value("HOST-NOBUS-RC"), Some("0"), "{}", r.output);
    assert!(
        !nobus
            .iter()
            .any(|l| l.contains("Failed to register machine")),
        "{nobus:?}"
    );
    assert!(
        nobus.iter().any(|l| l.contains("RVMSPAWN-GUEST-INIT")),
        "{nobus:?}"
    );
}
