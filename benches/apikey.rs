//! API-key and token verification through the facade, with the `jsonwebtoken` crate as the
//! peer for HS256 tokens (same claims, same secret, same run).
//!
//! * `verify/memory`: a valid key against a `MemoryStore`, whole path: parse, CRC32, one
//!   lookup, HMAC-SHA256 of the secret, constant-time compare, status, scope, usage note.
//!   Target: at most 1 µs.
//! * `verify/memory_bad_checksum`: a mistyped key, refused before any lookup (with its
//!   audit event and metrics).
//! * `parse/checksum_only`: format and CRC32 of a valid key, nothing else.
//! * `verify/redis_uncached`: cache off, one `HGETALL` round trip per verification.
//! * `verify/redis_cached`: the verify cache in front of Redis (within its 5 s bound).
//! * `token_verify/palisade` vs `token_verify/jsonwebtoken`, and `token_issue/*`.
//!
//! Memory and token futures are polled once with a no-op waker (they are always ready), so
//! no executor cost is included. Redis rows use a throwaway `redis-server` (or `REDIS_URL`).
//! Run with `cargo bench --bench apikey`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use palisade::apikey::{ApiKeys, KeySpec, MemoryStore, Pepper, Peppers, RedisStore, Tokens};

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("memory futures are always ready"),
    }
}

fn peppers() -> Peppers {
    Peppers::new(Pepper::new(1, *b"benchmark pepper, 32 bytes long!").unwrap())
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));

    let keys = ApiKeys::builder(peppers())
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let created =
        ready(keys.create(KeySpec::new("bench", "k").scopes(["read:*", "write:own"]))).unwrap();
    let text = created.key.expose_secret().to_owned();
    assert!(ready(keys.verify(&text, "read:x")).unwrap().is_verified());
    g.bench_function(BenchmarkId::new("verify", "memory"), |b| {
        b.iter(|| ready(keys.verify(black_box(&text), "read:reports")).unwrap());
    });
    g.bench_function(BenchmarkId::new("parse", "checksum_only"), |b| {
        b.iter(|| {
            palisade::apikey::ParsedKey::parse(black_box(&text))
                .unwrap()
                .id()
        });
    });
    let mut typo = text.clone().into_bytes();
    let i = typo.len() - 3;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    g.bench_function(BenchmarkId::new("verify", "memory_bad_checksum"), |b| {
        b.iter(|| ready(keys.verify(black_box(&typo), "read:reports")).unwrap());
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => (url, None),
        _ => {
            let s = palisade_testkit::RedisServer::start().expect("redis-server for the bench");
            (s.url(), Some(s))
        }
    };
    let pool = || {
        palisade::apikey::deadpool_redis::Config::from_url(url.as_str())
            .create_pool(Some(palisade::apikey::deadpool_redis::Runtime::Tokio1))
            .unwrap()
    };
    let prefix = format!("palisade-bench:{}:", std::process::id());
    let (uncached, cached, text) = rt.block_on(async {
        let uncached = ApiKeys::builder(peppers())
            .store(RedisStore::new(pool()).with_prefix(prefix.clone()))
            .cache_ttl(Duration::ZERO)
            .build()
            .unwrap();
        let cached = ApiKeys::builder(peppers())
            .store(RedisStore::new(pool()).with_prefix(prefix.clone()))
            .cache_ttl(Duration::from_secs(5))
            .build()
            .unwrap();
        let k = uncached
            .create(KeySpec::new("bench", "k").scopes(["read:*"]))
            .await
            .unwrap();
        (uncached, cached, k.key.expose_secret().to_owned())
    });
    g.bench_function(BenchmarkId::new("verify", "redis_uncached"), |b| {
        b.to_async(&rt)
            .iter(|| async { uncached.verify(black_box(&text), "read:x").await.unwrap() });
    });
    g.bench_function(BenchmarkId::new("verify", "redis_cached"), |b| {
        b.to_async(&rt)
            .iter(|| async { cached.verify(black_box(&text), "read:x").await.unwrap() });
    });
    g.finish();
}

#[derive(serde::Serialize, serde::Deserialize)]
struct JwtClaims {
    iss: String,
    sub: String,
    caps: Vec<String>,
    iat: u64,
    exp: u64,
    jti: String,
}

const TOKEN_SECRET: [u8; 32] = *b"token signing secret of 32 bytes";

fn tokens(c: &mut Criterion) {
    let ours = Tokens::new(
        Peppers::new(Pepper::new(1, TOKEN_SECRET).unwrap()),
        "plugins",
    )
    .unwrap()
    .with_lifetime(Duration::from_secs(24 * 3600));
    let token = ours
        .issue("plugin:weather", ["weather:read", "net:fetch"])
        .unwrap();

    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    let enc = EncodingKey::from_secret(&TOKEN_SECRET).unwrap();
    let dec = DecodingKey::from_secret(&TOKEN_SECRET).unwrap();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["plugins"]);
    validation.leeway = 60;
    // Interchangeable: jsonwebtoken accepts our token.
    let theirs = jsonwebtoken::decode::<JwtClaims>(&token, &dec, &validation)
        .expect("palisade tokens are HS256 JWTs");
    let claims = theirs.claims;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("1".into());
    let peer_token = jsonwebtoken::encode(&header, &claims, &enc).unwrap();

    let mut g = c.benchmark_group("token_verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("verify", "palisade"), |b| {
        b.iter(|| ours.verify(black_box(&token)).unwrap());
    });
    g.bench_function(BenchmarkId::new("verify", "jsonwebtoken"), |b| {
        b.iter(|| {
            jsonwebtoken::decode::<JwtClaims>(black_box(&peer_token), &dec, &validation).unwrap()
        });
    });
    g.finish();

    let mut g = c.benchmark_group("token_issue");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("issue", "palisade"), |b| {
        b.iter(|| {
            ours.issue("plugin:weather", ["weather:read", "net:fetch"])
                .unwrap()
        });
    });
    g.bench_function(BenchmarkId::new("issue", "jsonwebtoken"), |b| {
        b.iter(|| jsonwebtoken::encode(&header, black_box(&claims), &enc).unwrap());
    });
    g.finish();
}

criterion_group!(benches, verify, tokens);
criterion_main!(benches);
