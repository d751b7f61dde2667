-- wrk script: every request a POST with a JSON body of POST_BYTES bytes (at least 10),
-- {"pad":"xx…"}. Used by ab.sh and cpusplit.sh when POST_BYTES is set.
local n = tonumber(os.getenv("POST_BYTES") or "")
if n == nil or n < 10 then
    error("POST_BYTES must be a number of bytes, 10 or more")
end
wrk.method = "POST"
wrk.body = '{"pad":"' .. string.rep("x", n - 10) .. '"}'
wrk.headers["Content-Type"] = "application/json"
