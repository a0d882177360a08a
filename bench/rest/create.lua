-- Create: POST {base}/Patient with a Synthea Patient (the server assigns a new id each time).
-- wrk -s create.lua URL -- BASE_PATH PATIENT_JSON_FILE
local common = require("common")
setup, response, done = common.setup, common.response, common.done

local req

function init(args)
  errors = 0
  local headers = common.json_headers
  headers["Prefer"] = "return=minimal"
  req = wrk.format("POST", args[1] .. "/Patient", headers, common.read_file(args[2]))
end

function request()
  return req
end
