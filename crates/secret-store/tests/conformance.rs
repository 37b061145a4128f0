//! The provider conformance suite on the in-process providers: memory, environment and
//! files in each format. (Redis: tests/redis.rs; Vault and Azure: tests/http_providers.rs.)

use std::sync::Arc;

use palisade_secret_store::testing;
use palisade_secret_store::{EnvProvider, FileProvider, MemoryProvider};

mod memory {
    use super::*;
    palisade_secret_store::provider_conformance!({
        let p = Arc::new(MemoryProvider::new());
        testing::seed(&*p).await;
        p
    });
}

mod env {
    use super::*;
    palisade_secret_store::provider_conformance!({
        let mut vars = testing::seed_vars("CONF_");
        vars.push(("PATH".to_owned(), "/usr/bin".to_owned()));
        Arc::new(EnvProvider::from_vars("CONF_", vars))
    });
}

fn file(name: &str, text: String) -> (tempfile::TempDir, Arc<FileProvider>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, Arc::new(FileProvider::new(path)))
}

mod dotenv_file {
    use super::*;
    palisade_secret_store::provider_conformance!(file("app.env", testing::seed_dotenv()));
}

mod json_file {
    use super::*;
    palisade_secret_store::provider_conformance!(file("secrets.json", testing::seed_json()));
}

mod toml_file {
    use super::*;
    palisade_secret_store::provider_conformance!(file("secrets.toml", testing::seed_toml()));
}
