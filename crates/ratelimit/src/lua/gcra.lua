-- GCRA (src/algorithm/gcra.rs): the theoretical arrival time, as one number.
local function ttl_ms(q) return math.ceil(q.burst * q.t / 1000) + 1000 end

local function load(q) return { tat = num(load_numbers(q)[1], 0) } end

local function check(q, s, c)
  local t = q.t
  local tau = q.burst * t
  local tat0 = math.max(s.tat, now)
  local new_tat = tat0 + c * t
  if new_tat <= now + tau then
    return true, idiv(now + tau - new_tat, t), new_tat - now, -1
  end
  local retry = -1
  if c <= q.burst then retry = new_tat - tau - now end
  return false, idiv(max0(now + tau - tat0), t), tat0 - now, retry
end

local function consume(q, s, c)
  save(q, fmt(math.max(s.tat, now) + c * q.t), ttl_ms(q))
end

local function refund(q, s, c)
  save(q, fmt(math.max(s.tat - c * q.t, now)), ttl_ms(q))
end
