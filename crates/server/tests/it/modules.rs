//! The crate's top-level modules name each other without a cycle.

#[test]
fn top_level_modules_form_no_cycle() {
    testkit::assert_acyclic(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}
