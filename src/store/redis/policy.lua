#!lua name=faspex_gate_v2
--[[
faspex-gate's policy steps as one Redis function library (Redis 7.0 or later).

Each function is one atomic step of crate::store::PolicyStore on the Redis store
(crate::store::redis), and mirrors the Rust rule named in its comment: crate::policy::seats,
crate::policy::one_client, crate::policy::timeouts and crate::policy::lockout. The store
conformance suite (src/store/conformance.rs) binds the two; it runs on this library twice, with
time given and with time from Redis.

Calling convention: KEYS[1] is the root "{key_prefix}:" (every key below starts with it; the hash
tag keeps them in one slot), further KEYS name the record the step is about. ARGV[1] is the clock:
"s" (Redis's TIME: production, so gateways with skewed clocks agree), "g:<ms>" (a time the caller
gives: tests), or "t:<offset ms>:<unix second>" (tests: TIME plus an offset, refused with CLOCKMOVED
unless TIME is still in that second, so the step's time is exact). Every function returns one JSON
document (cjson), with `wait = true` when what it changed must reach the replicas (the store then
sends WAIT). Durations are milliseconds; 0 for `abs` means no absolute timeout.

Keys under the root R:
  s:<session key>   hash: account client kind ip agent started last [cookie] bearer akind
  a:<account>       list: the account's session keys, oldest first (exists while it holds a seat)
  seats             set: accounts holding a seat
  sessions          set: every session key
  b:<bearer key>    string: the session key a bearer token is tied to
  l:<lock key>      hash: since until failures admin akind epoch [sources] (expires GRACE after
                    `until`; sources: the window's, newest first, comma-joined)
  u:<account>       string: the epoch of the account's last unlock, its tombstone (expires after
                    every lock it lifted could have ended, and not before TOMBSTONE)
  la:<account>      set: the account's lock keys          (expires with its last lock)
  locks             zset: lock key -> until                (expires with the last lock)
  wf:<lock key>     list: failure times in the window, oldest first (expires as it slides empty)
  ws:<lock key>     list: the latest failures' distinct source addresses, oldest first, at most
                    SOURCES (expires with wf:, goes when wf: does)
  wt:<lock key>     zset: ticket id -> when the reservation is presumed dead (expires likewise)
  wa:<account>      set: the account's failure windows     (expires with its last window)
  windows           zset: lock key -> when its window is empty (expires with the last window)
  done:<ticket id>  string: a finished check's answer, for a retry (expires)
  tickets, epoch    counters (never expire: ticket ids and lock epochs must not repeat)
  probe, secret     the readiness probe (expires) and the session secret's fingerprint
  logouts           stream: the Faspex logouts owed for sessions the gateway ended (idle, absolute,
                    admin, replaced) that had a Faspex cookie, each entry `cookie`; read by the
                    consumer group `gateways` (crate::store::redis::outbox), capped at ~10000
  lo:<entry id>     string: that entry's logout was sent once (expires after a day)
A lock key is the account, or "account\0address" (crate::store::LockKey::encode).

Epochs order every lock and unlock: each takes the next one, never less than Redis's TIME in ms
(a hybrid clock), so that after Redis came back empty, new epochs still follow the ones gateways
remember. `restore_locks` writes back the locks a gateway remembers after a failover or a Redis
that came back empty, and the unlocks it made (tombstones); a lock whose epoch is not above its
account's tombstone is never written back, so an unlock is never undone.

Retries are safe: a ticket finished twice answers the same (done:<id>); an admission of a session
key that exists already answers that session and takes no second seat. No key that should die is
written without its expiry in the same call.
]]

local GRACE = 600000 -- a lifted lock's record outlives `until` by this, so a sweep can report it
local TOMBSTONE = 86400000 -- an unlock's tombstone lives at least this long (and past every lock
                           -- it lifted): no gateway remembers a lock it could undo for longer
local SOURCES = 5 -- crate::policy::lockout::MAX_SOURCES
local R

local function clock(spec)
  local kind = string.sub(spec, 1, 1)
  if kind == 'g' then
    return tonumber(string.sub(spec, 3))
  end
  local t = redis.call('TIME')
  local sec = tonumber(t[1])
  if kind == 's' then
    return sec * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local off, want = string.match(spec, '^t:(%-?%d+):(%d+)$')
  if not off then
    error({err = 'ERR faspex-gate: bad clock argument'})
  end
  if tonumber(want) ~= sec then
    error({err = 'CLOCKMOVED the second changed; ask again'})
  end
  return sec * 1000 + tonumber(off)
end

local function account_of(lk)
  local i = string.find(lk, '\0', 1, true)
  if i then
    return string.sub(lk, 1, i - 1)
  end
  return lk
end

local function split(s)
  local out = {}
  if s and s ~= '' then
    for part in string.gmatch(s, '[^,]+') do
      out[#out + 1] = part
    end
  end
  return out
end

-- Give `key` an expiry at least `ttl` ms away (never shorten one).
local function extend(key, ttl)
  if ttl < 1 then ttl = 1 end
  local cur = redis.call('PTTL', key)
  if cur == -1 or (cur >= 0 and cur < ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
end

local function timeouts(idle, api_idle, abs)
  return {idle = tonumber(idle), api_idle = tonumber(api_idle), abs = tonumber(abs)}
end

-- ----- sessions -----

-- The hash under `R .. kind .. key` as a table (its fields and `key`), or nil when there is none.
local function load_hash(kind, key)
  local h = redis.call('HGETALL', R .. kind .. key)
  if #h == 0 then
    return nil
  end
  local t = {key = key}
  for i = 1, #h, 2 do
    t[h[i]] = h[i + 1]
  end
  return t
end

local function load_session(key)
  local s = load_hash('s:', key)
  if not s then
    return nil
  end
  s.started = tonumber(s.started)
  s.last = tonumber(s.last)
  return s
end

-- crate::policy::timeouts::deadline
local function deadline(s, t)
  local limit = t.api_idle
  if s.kind == 'browser' then
    limit = t.idle
  end
  local idle_end = s.last + limit
  if t.abs > 0 and s.started + t.abs <= idle_end then
    return s.started + t.abs, 'absolute'
  end
  return idle_end, 'idle'
end

-- crate::policy::timeouts::expired: a deadline is reached at exactly its instant.
local function expired(s, now, t)
  local at, why = deadline(s, t)
  if now >= at then
    return why
  end
  return nil
end

-- The ends after which the gateway owes Faspex a logout (crate::proxy::ends): the person did
-- not log out through the gateway.
local OWED = {idle = true, absolute = true, admin = true, replaced = true}

-- End the session under `key`, for `why` (nil: a renewal, a rollback or the person's own logout);
-- when the gateway owes Faspex its logout, the entry goes into `logouts` in this same step.
local function remove_session(key, why)
  local s = load_session(key)
  if not s then
    return nil
  end
  if why and OWED[why] and s.cookie and s.cookie ~= '' then
    redis.call('XADD', R .. 'logouts', 'MAXLEN', '~', 10000, '*', 'cookie', s.cookie)
  end
  for _, b in ipairs(split(s.bearer)) do
    if redis.call('GET', R .. 'b:' .. b) == key then
      redis.call('DEL', R .. 'b:' .. b)
    end
  end
  local list = R .. 'a:' .. s.account
  redis.call('LREM', list, 0, key)
  if redis.call('LLEN', list) == 0 then
    redis.call('SREM', R .. 'seats', s.account)
  end
  redis.call('SREM', R .. 'sessions', key)
  redis.call('DEL', R .. 's:' .. key)
  return s
end

local function insert_session(s)
  local fields = {'account', s.account, 'client', s.client, 'kind', s.kind, 'ip', s.ip,
    'agent', s.agent, 'started', string.format('%.0f', s.started),
    'last', string.format('%.0f', s.last), 'bearer', s.bearer or '', 'akind', s.akind}
  redis.call('HSET', R .. 's:' .. s.key, unpack(fields))
  redis.call('RPUSH', R .. 'a:' .. s.account, s.key)
  redis.call('SADD', R .. 'seats', s.account)
  redis.call('SADD', R .. 'sessions', s.key)
end

-- End the session under `k` when it is past its deadline (adding it to `ended`); false when
-- there is no such session.
local function expire_one(k, now, t, ended)
  local s = load_session(k)
  if not s then
    return false
  end
  local why = expired(s, now, t)
  if why then
    remove_session(k, why)
    ended[#ended + 1] = {session = s, why = why}
  end
  return true
end

local function expire_account(account, now, t, ended)
  for _, k in ipairs(redis.call('LRANGE', R .. 'a:' .. account, 0, -1)) do
    expire_one(k, now, t, ended)
  end
end

local function expire_all(now, t, ended)
  for _, k in ipairs(redis.call('SMEMBERS', R .. 'sessions')) do
    if not expire_one(k, now, t, ended) then
      redis.call('SREM', R .. 'sessions', k)
    end
  end
end

-- The live sessions of `account` (oldest first), split by client: crate::policy::one_client::decide.
local function clients(account, client)
  local same, others = {}, {}
  for _, k in ipairs(redis.call('LRANGE', R .. 'a:' .. account, 0, -1)) do
    local s = load_session(k)
    if s then
      if s.client == client then
        same[#same + 1] = s
      else
        others[#others + 1] = s
      end
    end
  end
  return same, others
end

local function keys_of(sessions)
  local out = {}
  for _, s in ipairs(sessions) do
    out[#out + 1] = s.key
  end
  return out
end

-- Admission, in one step. Mirrors crate::policy::one_client::decide (reject, replace, take-over,
-- the same client renewing), crate::policy::seats::decide (a held seat, a free one, or full) and
-- seats::soonest_end, with crate::policy::timeouts ending what has expired first.
-- ARGV: clock key account akind client kind ip agent takeover max_sessions rule idle api_idle abs
local function admit(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local key, account, client = args[2], args[3], args[5]
  local takeover = args[9] == '1'
  local max_sessions = tonumber(args[10])
  local rule = args[11]
  local t = timeouts(args[12], args[13], args[14])

  -- A retry of an admission that went through: the same answer, no second seat.
  local existing = load_session(key)
  if existing then
    if existing.account ~= account then
      error({err = 'ERR faspex-gate: session key in use by another account'})
    end
    local _, others = clients(account, existing.client)
    return cjson.encode({outcome = 'admitted', session = existing, replaces = keys_of(others),
      ended = {}, retried = true, wait = true})
  end

  local ended = {}
  expire_account(account, now, t, ended)
  local same, others = clients(account, client)
  if #others > 0 and rule == 'reject' and not takeover then
    return cjson.encode({outcome = 'other', active = others[1], ended = ended})
  end
  local holds_seat = redis.call('EXISTS', R .. 'a:' .. account) == 1
  local function full()
    return (not holds_seat) and redis.call('SCARD', R .. 'seats') >= max_sessions
  end
  if full() then
    -- Sessions past their deadline still hold seats until swept: sweep now, and decide again
    -- (crate::policy::seats::decide_after_ending).
    expire_all(now, t, ended)
    if full() then
      local soonest = nil
      for _, k in ipairs(redis.call('SMEMBERS', R .. 'sessions')) do
        local s = load_session(k)
        if s then
          local at = deadline(s, t)
          if soonest == nil or at < soonest then
            soonest = at
          end
        end
      end
      return cjson.encode({outcome = 'full', soonest = soonest, ended = ended})
    end
  end
  local renewed = nil
  for _, s in ipairs(same) do
    remove_session(s.key)
    renewed = s.key
  end
  -- A renewal starts both clocks afresh too (crate::policy::timeouts::begins).
  local s = {key = key, account = account, client = client, kind = args[6], ip = args[7],
    agent = args[8], started = now, last = now, bearer = '', akind = args[4]}
  insert_session(s)
  return cjson.encode({outcome = 'admitted', session = s, renewed = renewed,
    replaces = keys_of(others), ended = ended, wait = true})
end

-- A lookup: crate::policy::timeouts::expired ends it, timeouts::touches moves its activity.
-- `active`: the times of the request's activity, oldest first (none: empty). It is `now`, or
-- earlier times for a touch a gateway answered from its view in an outage and sends now; each
-- counts at its own time, if the session was still live then, so an outage adds nothing to a
-- session's idle time.
local function lookup(key, now, active, t)
  local s = key and load_session(key)
  if not s then
    return cjson.encode({state = 'unknown'})
  end
  local last = s.last
  for _, at in ipairs(active) do
    if at > s.last and not expired(s, at, t) then
      s.last = at
    end
  end
  if s.last ~= last then
    redis.call('HSET', R .. 's:' .. key, 'last', string.format('%.0f', s.last))
  end
  local why = expired(s, now, t)
  if why then
    remove_session(key, why)
    return cjson.encode({state = 'ended', session = s, why = why})
  end
  return cjson.encode({state = 'live', session = s})
end

-- A lookup's activity argument: '0' none, '1' now, '-<ms>,-<ms>...' that long before now
-- (oldest first). The times, oldest first.
local function activity_at(arg, now)
  if arg == '0' then
    return {}
  elseif arg == '1' then
    return {now}
  end
  local times = {}
  for age in string.gmatch(arg, '[^,]+') do
    local ms = tonumber(string.match(age, '^%-(%d+)$'))
    if not ms then
      error({err = 'ERR faspex-gate: bad activity argument'})
    end
    times[#times + 1] = now - ms
  end
  if #times == 0 then
    error({err = 'ERR faspex-gate: bad activity argument'})
  end
  return times
end

-- ARGV: clock key activity idle api_idle abs
local function session(keys, args)
  R = keys[1]
  local now = clock(args[1])
  return lookup(args[2], now, activity_at(args[3], now), timeouts(args[4], args[5], args[6]))
end

-- ARGV: clock account client activity idle api_idle abs
local function client_session(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local found = nil
  for _, k in ipairs(redis.call('LRANGE', R .. 'a:' .. args[2], 0, -1)) do
    if redis.call('HGET', R .. 's:' .. k, 'client') == args[3] then
      found = k
      break
    end
  end
  return lookup(found, now, activity_at(args[4], now), timeouts(args[5], args[6], args[7]))
end

-- ARGV: clock bearer activity idle api_idle abs
local function bearer_session(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local key = redis.call('GET', R .. 'b:' .. args[2])
  return lookup(key or nil, now, activity_at(args[3], now), timeouts(args[4], args[5], args[6]))
end

-- ARGV: clock key has_cookie cookie
local function set_upstream_cookie(keys, args)
  R = keys[1]
  local h = R .. 's:' .. args[2]
  if redis.call('EXISTS', h) == 0 then
    return cjson.encode({found = false})
  end
  if args[3] == '1' then
    redis.call('HSET', h, 'cookie', args[4])
  else
    redis.call('HDEL', h, 'cookie')
  end
  return cjson.encode({found = true})
end

-- A bearer token tied to a session; the newest tie wins; at most `max` a session, oldest forgotten.
-- ARGV: clock key bearer max
local function add_bearer(keys, args)
  R = keys[1]
  local key, bearer, max = args[2], args[3], tonumber(args[4])
  if redis.call('EXISTS', R .. 's:' .. key) == 0 then
    return cjson.encode({found = false})
  end
  local owner = redis.call('GET', R .. 'b:' .. bearer)
  if owner and owner ~= key and redis.call('EXISTS', R .. 's:' .. owner) == 1 then
    local kept = {}
    for _, b in ipairs(split(redis.call('HGET', R .. 's:' .. owner, 'bearer'))) do
      if b ~= bearer then kept[#kept + 1] = b end
    end
    redis.call('HSET', R .. 's:' .. owner, 'bearer', table.concat(kept, ','))
  end
  local list = {}
  for _, b in ipairs(split(redis.call('HGET', R .. 's:' .. key, 'bearer'))) do
    if b ~= bearer then list[#list + 1] = b end
  end
  list[#list + 1] = bearer
  while #list > max do
    local forgotten = table.remove(list, 1)
    redis.call('DEL', R .. 'b:' .. forgotten)
  end
  redis.call('SET', R .. 'b:' .. bearer, key)
  redis.call('HSET', R .. 's:' .. key, 'bearer', table.concat(list, ','))
  return cjson.encode({found = true})
end

-- ARGV: clock key [why]
local function end_session(keys, args)
  R = keys[1]
  local s = remove_session(args[2], args[3])
  return cjson.encode({session = s, wait = s ~= nil})
end

-- ARGV: clock account
local function end_account(keys, args)
  R = keys[1]
  local ended = {}
  for _, k in ipairs(redis.call('LRANGE', R .. 'a:' .. args[2], 0, -1)) do
    local s = remove_session(k, 'admin')
    if s then ended[#ended + 1] = s end
  end
  return cjson.encode({sessions = ended, wait = #ended > 0})
end

-- ARGV: clock
local function sessions(keys, args)
  R = keys[1]
  local out = {}
  for _, k in ipairs(redis.call('SMEMBERS', R .. 'sessions')) do
    local s = load_session(k)
    if s then out[#out + 1] = s end
  end
  return cjson.encode({sessions = out})
end

-- ----- locks and failure windows -----

local function load_lock(lk)
  local l = load_hash('l:', lk)
  if not l then
    return nil
  end
  return {key = lk, since = tonumber(l.since), ['until'] = tonumber(l['until']),
    failures = tonumber(l.failures), admin = l.admin == '1', akind = l.akind,
    epoch = tonumber(l.epoch or '0'), sources = l.sources or ''}
end

-- crate::policy::lockout::holds: a lock lifts at exactly its end.
local function holds(l, now)
  return l ~= nil and l['until'] > now
end

-- crate::policy::lockout::in_force: its own lock or the account-wide one, the longer answers.
local function lock_in_force(lk, now)
  local own = load_lock(lk)
  local account = account_of(lk)
  local wide = nil
  if account ~= lk then
    wide = load_lock(account)
  end
  if not holds(own, now) then own = nil end
  if not holds(wide, now) then wide = nil end
  if own and wide then
    if own['until'] >= wide['until'] then return own end
    return wide
  end
  return own or wide
end

-- The next epoch: above every one handed out on this Redis and every one `floor` names, and not
-- below Redis's TIME in ms (so that a Redis that came back empty still counts on from there).
local function next_epoch(floor)
  local t = redis.call('TIME')
  local e = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = tonumber(redis.call('GET', R .. 'epoch') or '0')
  if last + 1 > e then e = last + 1 end
  if floor and floor + 1 > e then e = floor + 1 end
  redis.call('SET', R .. 'epoch', string.format('%.0f', e))
  return e
end

-- The account's tombstone: the epoch of its last unlock (0 when none is remembered).
local function tombstone(account)
  return tonumber(redis.call('GET', R .. 'u:' .. account) or '0')
end

-- Write lock `l` (with `l.epoch` set) and its indexes, each with its expiry.
local function write_lock(l, now)
  local h = R .. 'l:' .. l.key
  redis.call('DEL', h)
  redis.call('HSET', h, 'since', string.format('%.0f', l.since),
    'until', string.format('%.0f', l['until']), 'failures', l.failures,
    'admin', l.admin and '1' or '0', 'akind', l.akind, 'epoch', string.format('%.0f', l.epoch))
  if l.sources and l.sources ~= '' then
    redis.call('HSET', h, 'sources', l.sources)
  end
  local ttl = l['until'] - now + GRACE
  redis.call('PEXPIRE', h, math.max(ttl, 1))
  local la = R .. 'la:' .. account_of(l.key)
  redis.call('SADD', la, l.key)
  extend(la, ttl)
  redis.call('ZADD', R .. 'locks', l['until'], l.key)
  extend(R .. 'locks', ttl)
end

-- The window's source addresses, newest first, comma-joined; and they are forgotten
-- (crate::policy::lockout: a lock made by failures carries them, its window starts afresh).
local function take_sources(lk)
  local ws = R .. 'ws:' .. lk
  local list = redis.call('LRANGE', ws, 0, -1)
  redis.call('DEL', ws)
  local out = {}
  for i = #list, 1, -1 do
    out[#out + 1] = list[i]
  end
  return table.concat(out, ',')
end

-- A failure came from `ip`: crate::policy::lockout::remember_source (each address once, the
-- newest SOURCES kept).
local function remember_source(lk, ip)
  if ip == nil or ip == '' then return end
  local ws = R .. 'ws:' .. lk
  redis.call('LREM', ws, 0, ip)
  redis.call('RPUSH', ws, ip)
  redis.call('LTRIM', ws, -SOURCES, -1)
end

-- A new lock: the next epoch, then written.
local function place_lock(l, now)
  l.epoch = next_epoch()
  write_lock(l, now)
end

local function drop_window(lk)
  redis.call('DEL', R .. 'wf:' .. lk, R .. 'wt:' .. lk, R .. 'ws:' .. lk)
  redis.call('ZREM', R .. 'windows', lk)
  redis.call('SREM', R .. 'wa:' .. account_of(lk), lk)
end

-- After a change to `lk`'s window: give its keys their expiry, index it, or drop it when empty.
local function settle_window(lk, now, window)
  local wf, wt = R .. 'wf:' .. lk, R .. 'wt:' .. lk
  local empty_at = 0
  local last = redis.call('LINDEX', wf, -1)
  if last then
    empty_at = tonumber(last) + window
    redis.call('PEXPIRE', wf, math.max(empty_at - now, 1))
    redis.call('PEXPIRE', R .. 'ws:' .. lk, math.max(empty_at - now, 1))
  else
    redis.call('DEL', R .. 'ws:' .. lk)
  end
  local top = redis.call('ZRANGE', wt, -1, -1, 'WITHSCORES')
  if #top == 2 then
    local dead = tonumber(top[2])
    redis.call('PEXPIRE', wt, math.max(dead - now, 1))
    if dead > empty_at then empty_at = dead end
  end
  if empty_at == 0 then
    drop_window(lk)
    return
  end
  redis.call('ZADD', R .. 'windows', empty_at, lk)
  extend(R .. 'windows', empty_at - now)
  local wa = R .. 'wa:' .. account_of(lk)
  redis.call('SADD', wa, lk)
  extend(wa, empty_at - now)
end

-- Failures that slid out of the window (crate::policy::lockout::counts_at) and dead
-- reservations go; returns the failures left, oldest first.
local function prune(lk, now, window)
  local wf = R .. 'wf:' .. lk
  local failures = redis.call('LRANGE', wf, 0, -1)
  local first = 1
  while first <= #failures and now - tonumber(failures[first]) >= window do
    first = first + 1
  end
  if first > 1 then
    redis.call('LTRIM', wf, first - 1, -1)
  end
  if first > #failures then
    -- (no failure left: nor where they came from)
    redis.call('DEL', R .. 'ws:' .. lk)
  end
  -- (a reservation holds its place while now < its end: crate::policy::lockout::ticket_live)
  redis.call('ZREMRANGEBYSCORE', R .. 'wt:' .. lk, '-inf', now)
  local left = {}
  for i = first, #failures do
    left[#left + 1] = tonumber(failures[i])
  end
  return left
end

-- Keep the number of windows under `max` before adding one, as crate::policy::lockout's
-- must_make_room, evictable and eviction_cutoff say: windows that slid empty go first, then
-- those whose last failure is oldest (the index orders them by when they slide empty, which is
-- the same order); windows with a check in flight stay, and locks are never evicted.
local function make_room(now, max)
  if max < 1 then max = 1 end
  local idx = R .. 'windows'
  if redis.call('ZCARD', idx) < max then return end
  for _, lk in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', now)) do
    drop_window(lk)
  end
  local card = redis.call('ZCARD', idx)
  if card < max then return end
  local n = math.max(math.floor(max / 8), card + 1 - max)
  for _, lk in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
    if n <= 0 then break end
    if redis.call('ZCARD', R .. 'wt:' .. lk) == 0 then
      drop_window(lk)
      n = n - 1
    end
  end
end

-- May a credential check run now? Mirrors crate::policy::lockout::in_force and before_check
-- (a lock, a place under the threshold, busy, or a full window that locks or resets).
-- ARGV: clock lock_key threshold window duration max_tracked ticket_ttl
local function begin_attempt(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local lk = args[2]
  local threshold, window, duration = tonumber(args[3]), tonumber(args[4]), tonumber(args[5])
  local max_tracked, ticket_ttl = tonumber(args[6]), tonumber(args[7])
  for _ = 1, 2 do
    local lock = lock_in_force(lk, now)
    if lock then
      return cjson.encode({start = 'locked', lock = lock})
    end
    if not redis.call('ZSCORE', R .. 'windows', lk) then
      make_room(now, max_tracked)
    end
    local failures = prune(lk, now, window)
    local in_flight = redis.call('ZCARD', R .. 'wt:' .. lk)
    if #failures >= math.max(threshold, 1) then
      -- The window holds the threshold without a lock: it locks as the failure that reached
      -- it would have, or (that lock over already) starts afresh and asks again.
      local since = failures[#failures]
      redis.call('DEL', R .. 'wf:' .. lk)
      local sources = take_sources(lk)
      settle_window(lk, now, window)
      if since + duration > now then
        local l = {key = lk, since = since, ['until'] = since + duration,
          failures = #failures, admin = false, akind = 'directory', sources = sources}
        place_lock(l, now)
        return cjson.encode({start = 'locked', lock = l, wait = true})
      end
    elseif #failures + in_flight >= threshold then
      settle_window(lk, now, window)
      return cjson.encode({start = 'busy'})
    else
      local id = redis.call('INCR', R .. 'tickets')
      -- (crate::policy::lockout::ticket_expires)
      redis.call('ZADD', R .. 'wt:' .. lk, now + ticket_ttl, id)
      settle_window(lk, now, window)
      return cjson.encode({start = 'proceed', id = id})
    end
  end
  return cjson.encode({start = 'busy'})
end

-- A check's result. Mirrors crate::policy::lockout::counts_failure and after_failure (the
-- failure that reaches the threshold locks; an administrator's lock placed meanwhile answers).
-- Finishing a ticket twice answers the same and counts once.
-- ARGV: clock lock_key ticket akind result threshold window duration max_tracked done_ttl
--       [source address]
local function finish_attempt(keys, args)
  R = keys[1]
  local done_key = R .. 'done:' .. args[3]
  local done = redis.call('GET', done_key)
  if done then
    return done
  end
  local now = clock(args[1])
  local lk, id, akind, result = args[2], args[3], args[4], args[5]
  local threshold, window, duration = tonumber(args[6]), tonumber(args[7]), tonumber(args[8])
  local max_tracked, done_ttl = tonumber(args[9]), tonumber(args[10])
  redis.call('ZREM', R .. 'wt:' .. lk, id)
  local answer
  local lock = lock_in_force(lk, now)
  if lock then
    answer = {['end'] = 'already', lock = lock}
  elseif result ~= 'rejected' then
    answer = {['end'] = 'done'}
  else
    if not redis.call('ZSCORE', R .. 'windows', lk) then
      make_room(now, max_tracked)
    end
    prune(lk, now, window)
    local wf = R .. 'wf:' .. lk
    redis.call('RPUSH', wf, string.format('%.0f', now))
    remember_source(lk, args[11])
    -- (the newest threshold's worth: crate::policy::lockout::failures_kept)
    if threshold >= 1 then
      redis.call('LTRIM', wf, -threshold, -1)
    end
    local failures = redis.call('LLEN', wf)
    if failures >= threshold then
      local l = {key = lk, since = now, ['until'] = now + duration, failures = failures,
        admin = false, akind = akind, sources = take_sources(lk)}
      redis.call('DEL', wf)
      place_lock(l, now)
      answer = {['end'] = 'locked', lock = l, wait = true}
    else
      answer = {['end'] = 'counted', failures = failures}
    end
  end
  settle_window(lk, now, window)
  local encoded = cjson.encode(answer)
  redis.call('SET', done_key, encoded, 'PX', math.max(done_ttl, 1))
  return encoded
end

-- ARGV: clock lock_key
local function lock_state(keys, args)
  R = keys[1]
  return cjson.encode({lock = lock_in_force(args[2], clock(args[1])),
    unlocked = tombstone(account_of(args[2]))})
end

-- An administrator's lock: crate::policy::lockout::admin_lock (never shortens one in force).
-- ARGV: clock account akind duration (until - now)
local function lock_account(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local account = args[2]
  local till = now + tonumber(args[4])
  local existing = load_lock(account)
  if holds(existing, now) and existing['until'] > till then
    till = existing['until']
  end
  local l = {key = account, since = now, ['until'] = till,
    failures = redis.call('LLEN', R .. 'wf:' .. account), admin = true, akind = args[3],
    sources = ''}
  place_lock(l, now)
  return cjson.encode({lock = l, wait = true})
end

-- Every lock of the account lifted, its failures cleared (reservations stay, so their tickets
-- still find their window).
-- ARGV: clock account
-- The account's locks with an epoch below `epoch` lifted (all of them without one); returns them
-- and the longest any of them ran (since to until).
local function lift_locks(account, epoch)
  local lifted, longest = {}, 0
  local la = R .. 'la:' .. account
  for _, lk in ipairs(redis.call('SMEMBERS', la)) do
    local l = load_lock(lk)
    if l == nil or epoch == nil or l.epoch < epoch then
      if l then
        lifted[#lifted + 1] = l
        if l['until'] - l.since > longest then longest = l['until'] - l.since end
        redis.call('DEL', R .. 'l:' .. lk)
      end
      redis.call('ZREM', R .. 'locks', lk)
      redis.call('SREM', la, lk)
    end
  end
  return lifted, longest
end

-- Set the account's tombstone to `epoch` (never lower it), living `keep` ms at least.
local function set_tombstone(account, epoch, keep)
  local u = R .. 'u:' .. account
  if tombstone(account) < epoch then
    redis.call('SET', u, string.format('%.0f', epoch))
  end
  extend(u, keep)
end

-- Every lock of the account lifted, its failures cleared (reservations stay, so their tickets
-- still find their window), and its tombstone set to a new epoch: a lock older than this unlock
-- is never written back. The tombstone outlives every lock it lifted could have lasted.
-- ARGV: clock account
local function unlock_account(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local account = args[2]
  local lifted, longest = lift_locks(account, nil)
  local keep = math.max(TOMBSTONE, longest + GRACE)
  local epoch = next_epoch()
  set_tombstone(account, epoch, keep)
  local cleared = 0
  for _, lk in ipairs(redis.call('SMEMBERS', R .. 'wa:' .. account)) do
    if redis.call('LLEN', R .. 'wf:' .. lk) > 0 then
      cleared = cleared + 1
    end
    redis.call('DEL', R .. 'wf:' .. lk, R .. 'ws:' .. lk)
    local top = redis.call('ZRANGE', R .. 'wt:' .. lk, -1, -1, 'WITHSCORES')
    if #top == 2 then
      redis.call('ZADD', R .. 'windows', tonumber(top[2]), lk)
    else
      drop_window(lk)
    end
  end
  return cjson.encode({lifted = lifted, cleared = cleared, epoch = epoch, now = now,
    keep = keep, wait = true})
end

-- Write back what a gateway remembers, after a failover or a Redis that came back empty: first
-- its unlocks (a tombstone lifts the account's older locks), then its locks, each only when it
-- has not ended, its epoch is above its account's tombstone, and the lock here (if any) is older
-- and ends sooner. Epochs handed out later follow every epoch written back. Running it twice, or
-- from two gateways in either order, ends the same.
-- ARGV: clock {"locks": [lock...], "unlocks": [{account, epoch, keep}...]}
local function restore_locks(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local given = cjson.decode(args[2])
  local highest = 0
  local written, refused, kept = 0, 0, 0
  for _, u in ipairs(given.unlocks or {}) do
    local epoch, keep = tonumber(u.epoch), tonumber(u.keep)
    if epoch > highest then highest = epoch end
    if keep > 0 then
      set_tombstone(u.account, epoch, keep)
      lift_locks(u.account, epoch)
    end
  end
  for _, g in ipairs(given.locks or {}) do
    local l = {key = g.key, since = tonumber(g.since), ['until'] = tonumber(g['until']),
      failures = tonumber(g.failures), admin = g.admin == true, akind = g.akind,
      epoch = tonumber(g.epoch)}
    if l.epoch > highest then highest = l.epoch end
    local here = load_lock(l.key)
    if not holds(l, now) or l.epoch <= tombstone(account_of(l.key)) then
      refused = refused + 1
    elseif here and (here.epoch >= l.epoch or (holds(here, now) and here['until'] >= l['until'])) then
      kept = kept + 1
    else
      write_lock(l, now)
      written = written + 1
    end
  end
  if highest > 0 then
    next_epoch(highest)
  end
  return cjson.encode({written = written, refused = refused, kept = kept,
    wait = written > 0})
end

-- Locks in force (crate::policy::lockout::holds).
-- ARGV: clock
local function lockouts(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local out = {}
  for _, lk in ipairs(redis.call('ZRANGEBYSCORE', R .. 'locks', '(' .. now, '+inf')) do
    local l = load_lock(lk)
    if holds(l, now) then out[#out + 1] = l end
  end
  return cjson.encode({locks = out})
end

-- The gauges. ARGV: clock
local function counts(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local local_seats = 0
  for _, account in ipairs(redis.call('SMEMBERS', R .. 'seats')) do
    local first = redis.call('LINDEX', R .. 'a:' .. account, 0)
    if first and redis.call('HGET', R .. 's:' .. first, 'akind') == 'local' then
      local_seats = local_seats + 1
    end
  end
  local locks, accounts, local_accounts = 0, {}, {}
  local n_accounts, n_local = 0, 0
  for _, lk in ipairs(redis.call('ZRANGEBYSCORE', R .. 'locks', '(' .. now, '+inf')) do
    local l = load_lock(lk)
    if holds(l, now) then
      locks = locks + 1
      local a = account_of(lk)
      if not accounts[a] then
        accounts[a] = true
        n_accounts = n_accounts + 1
      end
      if l.akind == 'local' and not local_accounts[a] then
        local_accounts[a] = true
        n_local = n_local + 1
      end
    end
  end
  return cjson.encode({seats = redis.call('SCARD', R .. 'seats'),
    sessions = redis.call('SCARD', R .. 'sessions'), accounts_locked = n_accounts,
    local_seats = local_seats, local_accounts_locked = n_local, locks = locks,
    tracked_windows = redis.call('ZCARD', R .. 'windows')})
end

-- Sessions past their deadline end (crate::policy::timeouts::expired), locks past theirs lift
-- (lockout::holds), windows that slid empty go. Running it twice, or on two gateways, is harmless.
-- ARGV: clock idle api_idle abs window
local function sweep(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local t = timeouts(args[2], args[3], args[4])
  local ended = {}
  expire_all(now, t, ended)
  local lifted = {}
  for _, lk in ipairs(redis.call('ZRANGEBYSCORE', R .. 'locks', '-inf', now)) do
    local l = load_lock(lk)
    if l and not holds(l, now) then
      lifted[#lifted + 1] = l
      redis.call('DEL', R .. 'l:' .. lk)
    end
    if not holds(l, now) then
      redis.call('ZREM', R .. 'locks', lk)
      redis.call('SREM', R .. 'la:' .. account_of(lk), lk)
    end
  end
  local dropped = 0
  for _, lk in ipairs(redis.call('ZRANGEBYSCORE', R .. 'windows', '-inf', now)) do
    drop_window(lk)
    dropped = dropped + 1
  end
  return cjson.encode({ended = ended, lifted = lifted, dropped = dropped})
end

-- A write that proves the store answers and takes writes (and that this user may run the
-- library on these keys). ARGV: clock
local function probe(keys, args)
  R = keys[1]
  local now = clock(args[1])
  redis.call('SET', R .. 'probe', string.format('%.0f', now), 'PX', 60000)
  return cjson.encode({now = now})
end

-- ----- moving an embedded store in (`faspex-gate migrate-store`, crate::store::migrate) -----
-- Each record is copied in at most once, so the move can be run again: a marker remembers each
-- copy until the record would have ended anyway, and a record ended or lifted here since is not
-- brought back. Keys (under R, as above):
--   m:s:<session key>  a session copied in (expires at the deadline it had when copied)
--   m:l:<lock key>     a lock copied in: its `until` (expires then)

-- One session of an embedded store. A session already here is left as it is; one past its
-- deadline (crate::policy::timeouts::expired), one whose account holds a seat here on another
-- client (crate::policy::one_client), and one that would take a seat over `max_sessions`
-- (crate::policy::seats) are skipped. Nothing here ends a session: that would owe Faspex a logout.
-- ARGV: clock key account akind client kind ip agent started last has_cookie cookie bearer
--       max_sessions idle api_idle abs
local function import_session(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local key, account, client = args[2], args[3], args[5]
  local t = timeouts(args[15], args[16], args[17])
  if redis.call('EXISTS', R .. 's:' .. key) == 1 then
    return cjson.encode({result = 'present'})
  end
  local marker = R .. 'm:s:' .. key
  if redis.call('EXISTS', marker) == 1 then
    return cjson.encode({result = 'ended'})
  end
  local s = {key = key, account = account, client = client, kind = args[6], ip = args[7],
    agent = args[8], started = tonumber(args[9]), last = tonumber(args[10]), bearer = args[13],
    akind = args[4]}
  local at = deadline(s, t)
  if now >= at then
    return cjson.encode({result = 'expired'})
  end
  local seats = redis.call('SCARD', R .. 'seats')
  if redis.call('EXISTS', R .. 'a:' .. account) == 1 then
    local _, others = clients(account, client)
    if #others > 0 then
      return cjson.encode({result = 'other_client'})
    end
  elseif seats >= tonumber(args[14]) then
    return cjson.encode({result = 'full', seats = seats})
  end
  insert_session(s)
  if args[11] == '1' then
    redis.call('HSET', R .. 's:' .. key, 'cookie', args[12])
  end
  for _, b in ipairs(split(s.bearer)) do
    redis.call('SET', R .. 'b:' .. b, key)
  end
  redis.call('SET', marker, '1', 'PX', math.max(at - now, 1))
  return cjson.encode({result = 'copied'})
end

-- One lock of an embedded store, merged by the lockout rule (crate::policy::lockout::admin_lock):
-- the longer lock stands, and a lock here is never shortened. A lock copied before and lifted
-- here since stays lifted: an unlock stands.
-- ARGV: clock lock_key since until failures admin akind
local function import_lock(keys, args)
  R = keys[1]
  local now = clock(args[1])
  local lk = args[2]
  local l = {key = lk, since = tonumber(args[3]), ['until'] = tonumber(args[4]),
    failures = tonumber(args[5]), admin = args[6] == '1', akind = args[7]}
  if l['until'] <= now then
    return cjson.encode({result = 'expired'})
  end
  local cur = load_lock(lk)
  if not holds(cur, now) then cur = nil end
  local marker = R .. 'm:l:' .. lk
  local copied = redis.call('GET', marker)
  if copied and tonumber(copied) >= l['until'] then
    if cur then
      return cjson.encode({result = 'present'})
    end
    return cjson.encode({result = 'lifted'})
  end
  if cur and cur['until'] >= l['until'] then
    return cjson.encode({result = 'present'})
  end
  place_lock(l, now)
  redis.call('SET', marker, string.format('%.0f', l['until']), 'PX', math.max(l['until'] - now, 1))
  if cur then
    return cjson.encode({result = 'extended'})
  end
  return cjson.encode({result = 'copied'})
end

local function register(name, callback, read_only)
  local f = {function_name = 'faspex_gate_v2_' .. name, callback = callback}
  if read_only then
    f.flags = {'no-writes'}
  end
  redis.register_function(f)
end

register('admit', admit)
register('session', session)
register('client_session', client_session)
register('bearer_session', bearer_session)
register('set_upstream_cookie', set_upstream_cookie)
register('add_bearer', add_bearer)
register('end_session', end_session)
register('end_account', end_account)
register('sessions', sessions, true)
register('sweep', sweep)
register('begin_attempt', begin_attempt)
register('finish_attempt', finish_attempt)
register('lock_state', lock_state, true)
register('lock_account', lock_account)
register('unlock_account', unlock_account)
register('lockouts', lockouts, true)
register('counts', counts, true)
register('probe', probe)
register('import_session', import_session)
register('import_lock', import_lock)
register('restore_locks', restore_locks)
