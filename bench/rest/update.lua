-- Update: PUT {base}/Patient/{id} of known ids, round robin from a random start, with a body
-- that changes on every request (name[0].family carries a counter).
-- wrk -s update.lua URL -- BASE_PATH IDS_FILE TEMPLATE_FILE
-- (IDS_FILE: one Patient id per line; TEMPLATE_FILE: Patient JSON with "__ID__" and "__FAMILY__")
local common = require("common")
setup, response, done = common.setup, common.response, common.done

local base, ids, template, headers
local n = 0
local start

function init(args)
  errors = 0
  base = args[1]
  ids = common.read_lines(args[2])
  template = common.read_file(args[3])
  headers = common.json_headers
  headers["Prefer"] = "return=minimal"
  math.randomseed(os.time() * 1000 + thread_id)
  start = math.random(#ids)
end

function request()
  n = n + 1
  local id = ids[(start + n) % #ids + 1]
  local family = string.format("Bench%d-%d", thread_id, n)
  local body = template:gsub("__ID__", id):gsub("__FAMILY__", family)
  return wrk.format("PUT", base .. "/Patient/" .. id, headers, body)
end
