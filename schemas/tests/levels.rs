//! The registry's compatibility levels built on the resolution rules, including the one
//! difference that matters in practice: transitive levels check every earlier version.

use apache_avro::Schema;
use orderflow_schemas::{CompatibilityLevel, compat::Direction};

fn record(fields: &str) -> Schema {
    Schema::parse_str(&format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#)).unwrap()
}

#[test]
fn every_level_parses_from_its_name_in_any_case_and_rejects_others() {
    for level in CompatibilityLevel::ALL {
        assert_eq!(level.as_str().parse::<CompatibilityLevel>().unwrap(), level);
        assert_eq!(level.as_str().to_lowercase().parse::<CompatibilityLevel>().unwrap(), level);
    }
    assert!("SIDEWAYS".parse::<CompatibilityLevel>().unwrap_err().contains("BACKWARD_TRANSITIVE"));
}

#[test]
fn transitive_and_plain_levels_differ_on_a_three_version_chain() {
    // v1 has no `b`; v2 adds `b` with a default; v3 drops the default. v3 reads v2 data (b is
    // there) but not v1 data (b is missing and has no default).
    let v1 = record(r#"{"name":"a","type":"string"}"#);
    let v2 = record(r#"{"name":"a","type":"string"},{"name":"b","type":"string","default":""}"#);
    let v3 = record(r#"{"name":"a","type":"string"},{"name":"b","type":"string"}"#);
    assert!(CompatibilityLevel::Backward.check(&v3, &[&v1, &v2]).is_empty());
    let found = CompatibilityLevel::BackwardTransitive.check(&v3, &[&v1, &v2]);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].position, found[0].direction), (1, Direction::NewReadsOld));
}

#[test]
fn forward_means_old_readers_read_new_data() {
    let v1 = record(r#"{"name":"a","type":"string"}"#);
    let dropped = record(r#"{"name":"z","type":"string","default":""}"#);
    let added_required = record(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
    assert!(CompatibilityLevel::Forward.check(&added_required, &[&v1]).is_empty(), "old readers skip b");
    assert!(!CompatibilityLevel::Backward.check(&added_required, &[&v1]).is_empty(), "new readers need b");
    assert!(!CompatibilityLevel::Forward.check(&dropped, &[&v1]).is_empty(), "old readers need a");
}

#[test]
fn full_needs_both_directions_and_none_needs_nothing() {
    let v1 = record(r#"{"name":"a","type":"string"}"#);
    let optional_added = record(r#"{"name":"a","type":"string"},{"name":"b","type":["null","int"],"default":null}"#);
    let required_added = record(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
    assert!(CompatibilityLevel::Full.check(&optional_added, &[&v1]).is_empty());
    assert!(!CompatibilityLevel::Full.check(&required_added, &[&v1]).is_empty());
    assert!(CompatibilityLevel::None.check(&Schema::Int, &[&v1]).is_empty());
}

#[test]
fn full_transitive_checks_every_version_both_ways() {
    let v1 = record(r#"{"name":"a","type":"string"}"#);
    let v2 = record(r#"{"name":"a","type":"string"},{"name":"b","type":"string","default":""}"#);
    let v3 = record(r#"{"name":"a","type":"string"},{"name":"b","type":"string"}"#);
    assert!(!CompatibilityLevel::FullTransitive.check(&v3, &[&v1, &v2]).is_empty());
    assert!(CompatibilityLevel::ForwardTransitive.check(&v3, &[&v1, &v2]).is_empty());
}
