-- Token bucket (src/algorithm/token_bucket.rs): 'tokens:last'.
local function ttl_ms(q) return math.ceil(q.burst * q.t / 1000) + 1000 end

local function load(q)
  local v = load_numbers(q)
  return { tokens = num(v[1], q.burst), last = num(v[2], now) }
end

local function refill(tokens, last, burst, t)
  if now <= last then return math.min(tokens, burst), last end
  local add = idiv(now - last, t)
  if tokens + add >= burst then return burst, now end
  return tokens + add, last + add * t
end

local function check(q, s, c)
  local burst, t = q.burst, q.t
  local tok, l = refill(s.tokens, s.last, burst, t)
  if c <= tok then
    local left = tok - c
    return true, left, max0(l + (burst - left) * t - now), -1
  end
  local retry = -1
  if c <= burst then retry = max0(l + (c - tok) * t - now) end
  return false, tok, max0(l + (burst - tok) * t - now), retry
end

local function consume(q, s, c)
  local tok, l = refill(s.tokens, s.last, q.burst, q.t)
  save(q, fmt(max0(tok - c)) .. ':' .. fmt(l), ttl_ms(q))
end

local function refund(q, s, c)
  local tok, l = refill(s.tokens, s.last, q.burst, q.t)
  tok = math.min(tok + c, q.burst)
  if tok == q.burst then l = math.max(now, l) end
  save(q, fmt(tok) .. ':' .. fmt(l), ttl_ms(q))
end
