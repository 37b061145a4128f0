//! The scripts' readers of stored numbers (common.lua `numbers_of`, ledger.lua `split6`)
//! read exactly what the `gmatch` loop they replace read, for what the scripts write and
//! for any other text a key may hold, on a real Redis' Lua.

use palisade_testkit::test_redis;

/// The prelude, an algorithm and the ledger, then: per argument, what the `gmatch`
/// reference and the readers make of it, where they differ.
const COMPARE: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/gcra.lua"),
    include_str!("../lua/ledger.lua"),
    r"
local function reference(raw)
  local out = {}
  for part in string.gmatch(raw, '[^:]+') do out[#out + 1] = tonumber(part) end
  return out
end
local function show(t)
  local s = {}
  for i = 1, 8 do
    if t[i] == nil then s[i] = 'nil' else s[i] = string.format('%.17g', t[i]) end
  end
  return table.concat(s, ',')
end
local differ = {}
for i = 1, #ARGV do
  local raw = ARGV[i]
  local want, got = reference(raw), numbers_of(raw)
  if show(want) ~= show(got) then
    differ[#differ + 1] = 'numbers_of ' .. raw .. ': ' .. show(got) .. ' want ' .. show(want)
  end
  local w6 = {}
  for j = 1, 6 do w6[j] = want[j] or 0 end
  local g6 = { split6(raw) }
  if show(w6) ~= show(g6) then
    differ[#differ + 1] = 'split6 ' .. raw .. ': ' .. show(g6) .. ' want ' .. show(w6)
  end
end
return differ
"
);

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test]
async fn stored_numbers_read_as_gmatch_read_them() {
    let redis = test_redis().unwrap();
    let mut conn = redis.async_connection().await.unwrap();
    let mut inputs: Vec<String> = [
        "",
        "5",
        "x",
        ":",
        "::",
        "1:2",
        "1:x",
        "x:1",
        "1::2",
        ":1",
        "1:",
        "1:2:",
        ":1:2",
        "1:2:3",
        "1:2:x",
        "1:2:3:",
        "1:2:3:4",
        "1:2:3:4:5:6",
        "1:2:3:4:5:6:7",
        "1:2:3:4:5:x",
        "1::2:3:4:5:6",
        "1.5:2",
        "1e3:4",
        " 1:2",
        "0x10:3",
        "inf:1",
        "nan:1:2",
        "1736000000123456",
        "1736000000123456:99",
        "17:1736000000123456:1736000011123456:3:16:1736000000123456",
        "9007199254740993:1",
        "-4:2",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Random text of the characters numbers and separators are made of.
    let alphabet = b"0123456789:.-ex n";
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    for _ in 0..3_000 {
        let len = next(&mut seed) % 24;
        let s: String = (0..len)
            .map(|_| char::from(alphabet[(next(&mut seed) % alphabet.len() as u64) as usize]))
            .collect();
        inputs.push(s);
    }
    for chunk in inputs.chunks(500) {
        let differ: Vec<String> = redis::cmd("EVAL")
            .arg(COMPARE)
            .arg(0)
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(differ.is_empty(), "{differ:#?}");
    }
}
