//! People who sign in with HTTP basic, checked against a file of bcrypt hashes: one
//! `name:bcrypt-hash[:role]` per line, as `htpasswd -nB` writes them (`#` starts a comment). The
//! registry (roles `write`, `read`) and the ops console (roles `operator`, `viewer`) use it; each
//! names its roles, the first being what a line without one gets.
//!
//! The file is re-read when it changes; one that cannot be read then keeps the last users (and
//! says so), so a half-written update locks nobody out. A malformed line is an error naming its
//! number, never its content (it holds a hash). An unknown name is checked against a decoy hash,
//! so it takes as long as a known one; a checked name and password are remembered for a few
//! minutes (bcrypt costs tens of milliseconds by design, and a client making a dozen calls should
//! pay it once); bcrypt checks run one per core, so a flood of wrong passwords queues instead of
//! taking every core.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// How long a checked user name and password are remembered.
const REMEMBER: Duration = Duration::from_secs(300);
/// Most remembered credentials; past it the memory starts over.
const REMEMBER_MAX: usize = 4096;

/// Someone whose password matched, and their role (one of the file's roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub name: String,
    pub role: &'static str,
}

/// Why basic credentials were refused; the message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

struct User {
    hash: String,
    role: &'static str,
}

struct Loaded {
    by_name: HashMap<String, User>,
    modified: Option<SystemTime>,
}

pub struct UsersFile {
    path: PathBuf,
    roles: &'static [&'static str],
    loaded: tokio::sync::Mutex<Loaded>,
    /// Checked credentials (a salted digest of name, password and hash) until when.
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
    salt: [u8; 32],
    /// A hash to check unknown names against, so they take as long as known ones.
    decoy: String,
    hashing: Semaphore,
}

impl UsersFile {
    /// Reads the file; `roles` are the roles a line may name, the first the default.
    pub async fn open(path: PathBuf, roles: &'static [&'static str]) -> anyhow::Result<UsersFile> {
        assert!(!roles.is_empty(), "a users file needs at least one role");
        let (by_name, modified) = read(&path, roles)?;
        tracing::info!(users = by_name.len(), file = %path.display(), "read the users file");
        let decoy = tokio::task::spawn_blocking(|| hash(&rand::random::<u64>().to_string(), bcrypt::DEFAULT_COST))
            .await?
            .context("hashing the decoy password")?;
        Ok(UsersFile {
            path,
            roles,
            loaded: tokio::sync::Mutex::new(Loaded { by_name, modified }),
            remembered: Mutex::default(),
            salt: rand::random(),
            decoy,
            hashing: Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
        })
    }

    /// Checks the part of an `Authorization: Basic …` header after the scheme.
    pub async fn verify_basic(&self, encoded: &str) -> Result<SignedIn, Refused> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| Refused("the basic credentials are not base64 of user:password".into()))?;
        let (name, password) =
            decoded.split_once(':').ok_or_else(|| Refused("the basic credentials are not user:password".into()))?;
        self.verify(name, password).await
    }

    /// Checks a name and password.
    pub async fn verify(&self, name: &str, password: &str) -> Result<SignedIn, Refused> {
        let (known_hash, role) = {
            let mut loaded = self.loaded.lock().await;
            self.refresh(&mut loaded).await;
            match loaded.by_name.get(name) {
                Some(user) => (Some(user.hash.clone()), user.role),
                None => (None, self.roles[0]),
            }
        };
        let known = known_hash.is_some();
        let hash = known_hash.unwrap_or_else(|| self.decoy.clone());
        let digest = self.digest(name, password, &hash);
        let verified = self.remembered(&digest) || {
            let _turn = self.hashing.acquire().await.ok();
            let password = password.to_string();
            let check = hash.clone();
            let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &check).unwrap_or(false))
                .await
                .unwrap_or(false);
            if ok && known {
                self.remember(digest);
            }
            ok
        };
        if !(known && verified) {
            tracing::warn!(user = name, "basic credentials refused");
            return Err(Refused("the user name or password is wrong".into()));
        }
        Ok(SignedIn { name: name.to_string(), role })
    }

    async fn refresh(&self, loaded: &mut Loaded) {
        let modified = tokio::fs::metadata(&self.path).await.and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == loaded.modified {
            return;
        }
        match read(&self.path, self.roles) {
            Ok((by_name, modified)) => {
                tracing::info!(users = by_name.len(), file = %self.path.display(), "re-read the users file");
                loaded.by_name = by_name;
                loaded.modified = modified;
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "the users file cannot be read; keeping the last users")
            }
        }
    }

    fn digest(&self, name: &str, password: &str, hash: &str) -> [u8; 32] {
        let mut digest = Sha256::new();
        for part in [&self.salt[..], name.as_bytes(), b"\0", password.as_bytes(), b"\0", hash.as_bytes()] {
            digest.update(part);
        }
        digest.finalize().into()
    }

    fn remembered(&self, digest: &[u8; 32]) -> bool {
        let remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        remembered.get(digest).is_some_and(|until| *until > Instant::now())
    }

    fn remember(&self, digest: [u8; 32]) {
        let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if remembered.len() >= REMEMBER_MAX {
            remembered.clear();
        }
        remembered.insert(digest, Instant::now() + REMEMBER);
    }
}

/// A bcrypt hash of `password` for a users file line.
pub fn hash(password: &str, cost: u32) -> anyhow::Result<String> {
    bcrypt::hash(password, cost).context("hashing the password")
}

/// The `hash-password` subcommand of a service with a users file: reads a password on standard
/// input and returns the file's line for `user` with `role`.
pub fn line_from_stdin(user: &str, role: &str, cost: u32) -> anyhow::Result<String> {
    use std::io::BufRead;
    anyhow::ensure!(!user.is_empty() && !user.contains(':'), "the user name must be non-empty and free of ':'");
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password).context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!password.is_empty(), "the password on standard input is empty");
    Ok(format!("{user}:{}:{role}", hash(password, cost)?))
}

/// Parses the file's lines (see the module header).
fn read(path: &Path, roles: &'static [&'static str]) -> anyhow::Result<(HashMap<String, User>, Option<SystemTime>)> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the users file {}", path.display()))?;
    let file = path.display();
    let mut users = HashMap::new();
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split(':').collect();
        let (name, hash, role) = match parts.as_slice() {
            [name, hash] => (*name, *hash, roles[0]),
            [name, hash, role] => (*name, *hash, *role),
            _ => anyhow::bail!("{file} line {number}: expected name:bcrypt-hash[:{}]", roles.join("|")),
        };
        anyhow::ensure!(!name.is_empty(), "{file} line {number}: the user name is empty");
        anyhow::ensure!(
            hash.starts_with("$2") && hash.parse::<bcrypt::HashParts>().is_ok(),
            "{file} line {number}: the hash is not bcrypt (make one with `htpasswd -nB` or the service's \
             `hash-password`)"
        );
        let Some(role) = roles.iter().find(|r| **r == role) else {
            anyhow::bail!("{file} line {number}: the role must be one of {}", roles.join(", "))
        };
        users.insert(name.to_string(), User { hash: hash.to_string(), role });
    }
    anyhow::ensure!(!users.is_empty(), "the users file {file} names no user");
    Ok((users, modified))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: &[&str] = &["operator", "viewer"];

    fn file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("orderflow-users-{}", rand::random::<u64>()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn a_known_password_signs_in_with_its_role_and_anything_else_is_refused() {
        let path =
            file(&format!("# on-call\nana:{}\nbo:{}:viewer\n", hash("s3cret", 4).unwrap(), hash("pw", 4).unwrap()));
        let users = UsersFile::open(path.clone(), ROLES).await.unwrap();
        assert_eq!(users.verify("ana", "s3cret").await, Ok(SignedIn { name: "ana".into(), role: "operator" }));
        assert_eq!(users.verify("bo", "pw").await.unwrap().role, "viewer");
        assert!(users.verify("ana", "wrong").await.is_err());
        assert!(users.verify("nobody", "s3cret").await.is_err());
        let basic = base64::engine::general_purpose::STANDARD.encode("ana:s3cret");
        assert_eq!(users.verify_basic(&basic).await.unwrap().name, "ana");
        assert_eq!(
            users.verify_basic("%%%").await.unwrap_err().0,
            "the basic credentials are not base64 of user:password"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_malformed_line_is_named_by_number_without_its_content() {
        for (text, says) in [
            ("ana:$2b$04$abc:root\n", "line 1: the hash is not bcrypt"),
            ("\nana\n", "line 2: expected name:bcrypt-hash[:operator|viewer]"),
            ("# nobody\n", "names no user"),
        ] {
            let path = file(text);
            let error = format!("{:#}", read(&path, ROLES).err().unwrap());
            assert!(error.contains(says), "{error}");
            assert!(!error.contains("$2b$04$abc"), "{error}");
            std::fs::remove_file(path).unwrap();
        }
        let path = file(&format!("ana:{}:root\n", hash("x", 4).unwrap()));
        let error = format!("{:#}", read(&path, ROLES).err().unwrap());
        assert!(error.contains("line 1: the role must be one of operator, viewer"), "{error}");
        std::fs::remove_file(path).unwrap();
    }
}
