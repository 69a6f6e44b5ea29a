//! The committed SDL must match the code. `TANDEM_UPDATE_SCHEMA=1 cargo test` rewrites it.

#[test]
fn committed_schema_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/schema.graphql");
    let generated = tandem::graphql::sdl();
    if std::env::var_os("TANDEM_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema/schema.graphql");
        return;
    }
    // Embedded at compile time, so the comparison is always with this checkout's file.
    let committed = include_str!("../../schema/schema.graphql");
    assert!(
        committed == generated,
        "schema/schema.graphql is out of date: run `TANDEM_UPDATE_SCHEMA=1 cargo test --test it schema`"
    );
}

#[test]
fn every_type_and_field_is_documented() {
    let sdl = tandem::graphql::sdl();
    for name in [
        "type Program",
        "type Partner",
        "type Referral",
        "type Deal",
        "input CreateProgramInput",
    ] {
        let at = sdl.find(name).unwrap_or_else(|| panic!("{name} missing"));
        let before = &sdl[..at];
        assert!(
            before.trim_end().ends_with("\"\"\""),
            "{name} has no description"
        );
    }
}
