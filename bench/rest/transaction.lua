-- Transaction: POST {base} with a transaction Bundle of ENTRIES Patient POST entries (each
-- creates a new Patient with a server id).
-- wrk -s transaction.lua URL -- BASE_PATH PATIENT_JSON_FILE ENTRIES
local common = require("common")
setup, response, done = common.setup, common.response, common.done

local req

function init(args)
  errors = 0
  local patient = common.read_file(args[2])
  local entries = {}
  for i = 1, tonumber(args[3]) do
    entries[i] = string.format(
      '{"fullUrl":"urn:uuid:00000000-0000-4000-8000-%012d","resource":%s,"request":{"method":"POST","url":"Patient"}}',
      i, patient)
  end
  local bundle = '{"resourceType":"Bundle","type":"transaction","entry":[' .. table.concat(entries, ",") .. ']}'
  local headers = common.json_headers
  headers["Prefer"] = "return=minimal"
  req = wrk.format("POST", args[1] .. "/", headers, bundle)
end

function request()
  return req
end
