//! The test harness itself: a test host that dies in the middle of a batch costs only the steps
//! it had not finished, which run again in a fresh test host.

use rvmspawn_tests::{Batch, Mode, mode};

#[test]
fn a_wedged_test_host_reruns_only_the_unfinished_steps() {
    if mode() != Mode::TestHost {
        eprintln!("skipped: only a batch in the test host is run again (this one runs directly)");
        return;
    }
    // Step b ends the test host (an immediate reboot, which QEMU's -no-reboot turns into an exit
    // without an exit code: testhost.sh's 125) on the first attempt only.
    let r = Batch::new()
        .step("a", "echo A=$RVMSPAWN_BATCH_ATTEMPT")
        .step(
            "b",
            "echo B-FIRST=$RVMSPAWN_BATCH_ATTEMPT
[ $RVMSPAWN_BATCH_ATTEMPT = 0 ] && echo b >/proc/sysrq-trigger && sleep 60
echo B=$RVMSPAWN_BATCH_ATTEMPT",
        )
        .step("c", "echo C=$RVMSPAWN_BATCH_ATTEMPT")
        .run();
    // a finished in the first test host and was not run again; b was cut short there and ran
    // again with c in the second.
    assert_eq!(r.step("a").value("A"), Some("0"), "{:?}", r.0);
    assert_eq!(r.step("b").value("B-FIRST"), Some("1"), "{:?}", r.0);
    assert_eq!(r.step("b").value("B"), Some("1"), "{:?}", r.0);
    assert_eq!(r.step("b").rc, Some(0), "{:?}", r.0);
    assert_eq!(r.step("c").value("C"), Some("1"), "{:?}", r.0);
}
