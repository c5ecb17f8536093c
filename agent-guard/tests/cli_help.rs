//! Snapshots of the command-line interface: it changes only on purpose.
//! Update with `TRYCMD=overwrite cargo test -p agent-guard --test cli_help`.
#[test]
fn cli_help_snapshots() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}
