//! `inventory`: reserves stock for paid orders (group `inventory`); `inventory stock set|show`
//! administers stock. See `orderflow_inventory::cli`.

fn main() -> anyhow::Result<()> {
    orderflow_inventory::cli::main()
}
