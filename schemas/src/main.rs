//! `orderflow-schemas`: the schema pull-request workflow.
//!
//! - `check`: every event's versions on disk against their earlier versions (and, with
//!   `--registry`, against what is registered); exits 1 naming the file, field and rule broken.
//! - `register`: registers every version in order; idempotent; prints subject, version and id.
//! - `embedded`: lists the versions this binary was built with (`<topic>/<Event>.v<N>`).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use orderflow_schemas::{
    Catalog, CompatibilityLevel, RegistryAccess, registry_access::RegistryCredentialArgs,
    registry_client::RegistryClient, workflow,
};

#[derive(Parser)]
#[command(name = "orderflow-schemas", about = "Check and register orderflow's Avro event schemas")]
struct Cli {
    /// Directory holding `<topic>/<Event>.v<N>.avsc`.
    #[arg(long, env = "ORDERFLOW_SCHEMAS_DIR", default_value = "schemas/avro", global = true)]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every version against its earlier versions on disk (and in a registry).
    Check {
        /// Level the on-disk history must satisfy.
        #[arg(long, default_value = "BACKWARD_TRANSITIVE")]
        compatibility: CompatibilityLevel,
        /// Also check versions not yet registered against this registry's subjects.
        #[arg(long, env = "ORDERFLOW_REGISTRY_URL")]
        registry: Option<String>,
        #[command(flatten)]
        credentials: RegistryCredentialArgs,
    },
    /// Register every version, oldest first (idempotent). A new version needs the registry's
    /// write credentials (ORDERFLOW_REGISTRY_USER with ORDERFLOW_REGISTRY_PASSWORD or
    /// ORDERFLOW_REGISTRY_PASSWORD_FILE, or ORDERFLOW_REGISTRY_TOKEN[_FILE]).
    Register {
        #[arg(long, env = "ORDERFLOW_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
        registry: String,
        #[command(flatten)]
        credentials: RegistryCredentialArgs,
    },
    /// List the schema versions embedded in this binary at build time.
    Embedded,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli: Cli = orderflow_settings::parse();
    if let Command::Embedded = cli.command {
        for schema in Catalog::embedded().iter() {
            println!("{}/{}.v{}", schema.topic, schema.event, schema.version);
        }
        return ExitCode::SUCCESS;
    }
    let catalog = match Catalog::load_dir(&cli.dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check { compatibility, registry, credentials } => {
            let client = match registry.as_deref().map(|url| credentials.access(url)).transpose() {
                Ok(access) => access.map(RegistryClient::new),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            match workflow::check(&catalog, compatibility, client.as_ref()).await {
                Ok(report) => {
                    report.notes.iter().for_each(|n| println!("ok    {n}"));
                    report.failures.iter().for_each(|f| eprintln!("FAIL  {f}"));
                    let versions = catalog.iter().count();
                    if report.passed() {
                        println!("{versions} schema versions checked ({compatibility}): all compatible");
                        ExitCode::SUCCESS
                    } else {
                        eprintln!("{} incompatibilities in {versions} schema versions", report.failures.len());
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Register { registry, credentials } => {
            let access = match credentials.access(&registry) {
                Ok(access) => access,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            register(&catalog, access).await
        }
        Command::Embedded => unreachable!("answered before the catalog on disk is read"),
    }
}

async fn register(catalog: &Catalog, access: RegistryAccess) -> ExitCode {
    match workflow::register(catalog, &RegistryClient::new(access)).await {
        Ok(registered) => {
            for (subject, version, id) in registered {
                println!("{subject} v{version} -> id {id}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
