use super::permissions::{covers, KeyRange};
use super::*;
use crate::config::EtcdConfig;

#[test]
fn probes_stay_under_the_meta_prefix() {
    let settings = EtcdConfig::default().settings("demo").expect("settings");
    let inspector = EtcdInspector::new(settings, "pgx");
    assert!(inspector.prefix_check().ok);
    let (a, b) = (inspector.probe_key(), inspector.probe_key());
    assert!(a.starts_with("/etcdsync-meta/demo/check/"), "{a}");
    assert_ne!(a, b);
}

#[test]
fn write_ranges_cover_a_prefix_only_when_they_hold_all_of_it() {
    let range = |key: &str, end: &[u8]| KeyRange::of_permission(key.as_bytes(), end);
    let prefix = |key: &str| range(key, &prefix_range_end(key));
    // `etcdctl role grant-permission R --prefix=true readwrite ''`: every key.
    let everything = range("", &[0]).into_iter().collect::<Vec<_>>();
    assert!(covers(&everything, "/etcdsync/"));
    assert!(covers(&[prefix("/").expect("range")], "/etcdsync/"));
    assert!(covers(
        &[prefix("/etcdsync/").expect("range")],
        "/etcdsync/"
    ));
    // A narrower or a neighbouring prefix, or a single key, is not enough.
    assert!(!covers(
        &[prefix("/etcdsync/public/").expect("range")],
        "/etcdsync/"
    ));
    assert!(!covers(
        &[prefix("/etcdsync-meta/").expect("range")],
        "/etcdsync/"
    ));
    assert_eq!(range("/etcdsync/", &[]), None);
    assert!(!covers(&[], "/etcdsync/"));
    // Adjacent ranges together do.
    let halves = [
        range("/etcdsync/", b"/etcdsync/m").expect("range"),
        range("/etcdsync/m", b"/etcdsync0").expect("range"),
    ];
    assert!(covers(&halves, "/etcdsync/"));
    assert!(!covers(&halves[..1], "/etcdsync/"));
}

#[test]
fn versions_parse_and_compare() {
    assert_eq!(parse_version("3.4.23"), Some((3, 4)));
    assert_eq!(parse_version("v3.5.0-rc.1"), Some((3, 5)));
    assert_eq!(parse_version("garbage"), None);
    let ok = EtcdInspector::version_check(&[("http://a".into(), "3.5.9".into())]);
    assert!(ok.ok, "{ok:?}");
    let old = EtcdInspector::version_check(&[
        ("http://a".into(), "3.5.9".into()),
        ("http://b".into(), "3.3.11".into()),
    ]);
    assert!(!old.ok);
    let fix = old.fix.unwrap_or_default();
    assert!(fix.contains("http://b") && fix.contains("3.4"), "{fix}");
}
