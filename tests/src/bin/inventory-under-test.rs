//! The real `inventory` command line, built inside the test package so suites can run it as a
//! process (and SIGKILL it): `CARGO_BIN_EXE_inventory-under-test`.

fn main() -> anyhow::Result<()> {
    orderflow_inventory::cli::main()
}
