//! A short run of every fault-injection scenario (the long randomized runs are
//! `make chaos`). The seed is random unless `SITEGRID_CHAOS_SEED` sets it, and is
//! printed, so a failure can be replayed with
//! `sitegrid-chaos --scenario <name> --seed <seed>`.

use std::sync::Mutex;
use std::time::Duration;

use sitegrid_integration_tests::chaos::{self, Scenario};

/// How long faults are injected in each scenario.
const DURATION: Duration = Duration::from_secs(4);

/// One scenario at a time: each starts several nodes, and two at once on a small
/// machine would make every timeout fire.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `scenario` (alone) for [`DURATION`] with test-only `faults` switched on; the
/// seed and the report.
fn run(scenario: Scenario, faults: &[&str]) -> (u64, chaos::Report) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seed = std::env::var("SITEGRID_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..1_000_000));
    println!("{} seed {seed}, faults {faults:?}", scenario.name());
    let report = runtime
        .block_on(chaos::run_with_faults(scenario, seed, DURATION, faults))
        .unwrap();
    println!("{report:?}");
    (seed, report)
}

fn check(scenario: Scenario) {
    let (seed, report) = run(scenario, &[]);
    assert!(report.faults > 0, "no fault was injected");
    assert!(
        report.anomalies.is_empty(),
        "{} seed {seed}: {:#?}",
        scenario.name(),
        report.anomalies
    );
    if scenario != Scenario::IdleTakeOffline {
        assert!(report.counts.ok > 0, "nothing was answered: {report:?}");
    }
}

macro_rules! scenarios {
    ($($(#[$attr:meta])* $test:ident => $scenario:ident),* $(,)?) => {
        $(
            #[test]
            $(#[$attr])*
            fn $test() {
                check(Scenario::$scenario);
            }
        )*

        #[test]
        fn every_scenario_has_a_test() {
            let tested = [$(Scenario::$scenario),*];
            for scenario in Scenario::all() {
                assert!(tested.contains(&scenario), "{} has no test", scenario.name());
            }
        }
    };
}

scenarios! {
    token_race_across_sites_while_nodes_die => TokenRace,
    versioned_replaces_while_nodes_die => VersionedKills,
    fail_policy_with_the_peer_frozen => FailFrozenPeer,
    warn_policy_with_the_peer_killed_then_brought_online => WarnKilledPeer,
    a_dead_site_is_taken_offline_in_time_with_no_traffic => IdleTakeOffline,
    symmetric_partition_with_fencing => Partition,
    one_way_partition_with_a_witness => OneWayPartition,
    resync_racing_live_writes => ResyncRace,
    link_break_during_resync => ResyncLinkBreak,
    rolling_replacement_of_every_node_of_a_site => RollingReplace,
    two_node_crashes_within_a_second => DoubleCrash,
    whole_site_restart_on_the_same_data => SiteRestart,
    a_paused_node_resumed => PausedNode,
    listener_failover_across_nodes => ListenerFailover,
    latency_and_loss_between_sites => LatencyLoss,
    a_node_killed_during_a_resync => KillDuringResync,
    nodes_restarted_with_skewed_clocks => ClockSkew,
}

/// The suite catches a real bug: primaries that acknowledge writes without waiting for
/// the peer site (here: without sending the sync backup at all) let both sites grant one
/// token, and the one-winner checker says so.
#[test]
fn the_one_winner_checker_catches_primaries_that_do_not_wait_for_the_peer_site() {
    let (_, report) = run(Scenario::TokenRace, &["skip-sync-backups"]);
    assert!(
        report
            .anomalies
            .iter()
            .any(|anomaly| anomaly.checker == "one winner per token"),
        "the broken code went unnoticed: {report:?}"
    );
}
