//! Our tokens are plain HS256 JWTs: the `jsonwebtoken` crate reads ours, and we read its.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use palisade_apikey::{Claims, Pepper, Peppers, TokenDenial, Tokens};

const SECRET: [u8; 32] = *b"interop secret, thirty-two bytes";

fn ours() -> Tokens {
    Tokens::new(
        Peppers::new(Pepper::new(7, SECRET).unwrap()),
        "plugin-server",
    )
    .unwrap()
    .with_lifetime(Duration::from_secs(24 * 3600))
}

#[test]
fn jsonwebtoken_reads_our_tokens_and_we_read_its() {
    let token = ours().issue("plugin:maps", ["geo:*"]).unwrap();
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&["plugin-server"]);
    let data =
        jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(&SECRET).unwrap(), &v)
            .expect("a standard HS256 JWT");
    assert_eq!(data.header.kid.as_deref(), Some("7"));
    assert_eq!(data.claims.sub, "plugin:maps");
    assert_eq!(data.claims.exp - data.claims.iat, 24 * 3600);

    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("7".into());
    let theirs = jsonwebtoken::encode(
        &header,
        &data.claims,
        &EncodingKey::from_secret(&SECRET).unwrap(),
    )
    .unwrap();
    let back = ours()
        .verify(&theirs)
        .expect("we read jsonwebtoken's token");
    assert!(back.has_capability("geo:tiles"));

    let forged = jsonwebtoken::encode(
        &header,
        &data.claims,
        &EncodingKey::from_secret(b"another key").unwrap(),
    )
    .unwrap();
    assert_eq!(ours().verify(&forged), Err(TokenDenial::BadSignature));
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &data.claims,
        &EncodingKey::from_secret(&SECRET).unwrap(),
    )
    .unwrap();
    assert_eq!(
        ours().verify(&hs384),
        Err(TokenDenial::Malformed),
        "HS256 only"
    );
}
