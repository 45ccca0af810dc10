# frozen_string_literal: true
#
# The Rails oracle: how the real Rails router and Rack parameter parser read a request.
#
# Faspex 4 is a Rails 3 application. Debian ships Rails 6.1 (ruby-actionpack) and Rack 2.2
# (ruby-rack); this program declares Faspex 4's routes the way a Rails 3 application would (`match`
# with every method, an optional `(.:format)`), runs each request through Rack::MethodOverride and
# the RouteSet into a controller, and reports what that controller saw. Nothing here is written to
# agree with faspex-gate: the routing, path normalisation, method override and parameter parsing
# are Rails' and Rack's own code.
#
# Protocol: one JSON request per line on stdin, one JSON answer per line on stdout.
#
#   {"version": true}
#     -> {"ruby": "3.1.2", "rails": "6.1.7.10", "rack": "2.2.22"}
#   {"method": "POST", "target": "/aspera/faspex/login?x=1", "headers": {"Content-Type": "..."},
#    "body_b64": "...", "decode_path": false}
#     -> {"action": "sessions#create" | null, "method": "POST", "params": {...} | null,
#         "path_params": {...}, "query_params": {...}, "body_params": {...}, "error": null | "...",
#         "legacy": {the same fields}, "xml_params": {...} | null, "xml_error": null | "..."}
#
# `action` is "controller#action" of the route Rails ran (null: no route, or Rails failed before
# routing); `method` the request method the controller saw, after Rack::MethodOverride; `params`
# the controller's `params` (path parameters, query and body, with the JSON parameter parser and
# ParamsWrapper for JSON as a `rails new` application since 3.1 has it); `error` what Rails or Rack
# raised (bad parameter syntax, invalid encoding, nesting too deep, a JSON body that does not
# parse, an unknown method).
#
# `legacy` is the same request read as Rails 3 on Rack 1.x read it (multipart bodies with Rack 1.4's
# boundary and part-name patterns, see RACK1_MULTIPART): request bodies also split on
# `;` (Rack 1's default separator) and XML bodies parsed into parameters with Hash.from_xml
# (Rails 3's default XML parameter parser, removed in Rails 4). Both readings run through the same
# Rails code; only those switches differ. `xml_params` repeats the legacy params when the body
# is XML.
#
# `decode_path: true` reads the path as a front end that percent-decodes PATH_INFO and resolves
# dot segments (as CGI, and some Apache set-ups, do) would hand it to Rails.

require "json"
require "base64"
require "stringio"
require "uri"

# Everything Rails or Rack might print goes to stderr; answers go to the real stdout only.
ANSWERS = IO.new(STDOUT.fileno, "w")
ANSWERS.sync = true
$stdout = $stderr

require "rack"
require "action_dispatch"
require "action_controller"
require "active_support/core_ext/hash/conversions"

# ------------------------------------------------------------------------------------------------
# The two readings: Rails 6.1 on Rack 2.2, and Rails 3 on Rack 1.x.

$legacy = false

# Rack 1.x split a urlencoded body on `&` and `;`, as it split query strings; Rack 2 splits bodies
# on `&` only (Rack::Request#POST calls parse_query(form_vars, '&')).
module LegacyBodySeparators
  def parse_query(qs, d = "&")
    d = "&;" if $legacy && d == "&"
    super(qs, d)
  end
end
Rack::Request.prepend(LegacyBodySeparators)
ActionDispatch::Request.prepend(LegacyBodySeparators)

# Rack 1.4's multipart patterns (lib/rack/multipart.rb), where Rack 2 changed them: the boundary
# pattern is case-sensitive and takes the last `boundary=` (a type it does not match is not
# multipart to the parser, and Request#POST then reads the body as a URL-encoded form, as Rack 2
# does too), and a part's name is the last `name=` after white space in its head. The rest of
# the multipart parser is Rack 2.2's.
RACK1_MULTIPART = %r|\Amultipart/.*boundary=\"?([^\";,]+)\"?|n
RACK1_CONTENT_DISPOSITION = /Content-Disposition:.*\s+name="?([^\";]*)"?/ni
RACK2_CONTENT_DISPOSITION = Rack::Multipart::MULTIPART_CONTENT_DISPOSITION

module LegacyMultipartBoundary
  def parse_boundary(content_type)
    return super unless $legacy
    return unless content_type

    content_type.match(RACK1_MULTIPART)&.[](1)
  end
end
Rack::Multipart::Parser.singleton_class.prepend(LegacyMultipartBoundary)

def use_content_disposition(pattern)
  Rack::Multipart.send(:remove_const, :MULTIPART_CONTENT_DISPOSITION)
  Rack::Multipart.const_set(:MULTIPART_CONTENT_DISPOSITION, pattern)
end

MODERN_PARSERS = ActionDispatch::Request.parameter_parsers.dup
# Rails 3's ParamsParser: `Mime::XML => :xml_simple`, i.e. Hash.from_xml(raw_post) || {}.
LEGACY_PARSERS = MODERN_PARSERS.merge(xml: ->(raw_post) { Hash.from_xml(raw_post) || {} })

# ------------------------------------------------------------------------------------------------
# Controllers: every action records what it saw.

$captured = nil

class CaptureController < ActionController::Metal
  abstract!
  include ActionController::ParamsWrapper
  # config/initializers/wrap_parameters.rb of every `rails new` application since 3.1.
  wrap_parameters format: [:json]

  def self.actions(*names)
    names.each do |name|
      define_method(name) { capture }
    end
  end

  # Record the action before anything reads the parameters, so that a parameter error still says
  # which action the route reached.
  def dispatch(name, request, response)
    $captured = { action: "#{self.class.controller_path}##{name}" }
    super
  end

  private

  def capture
    $captured[:method] = request.request_method
    $captured[:params] = params
    $captured[:path_params] = request.path_parameters
    $captured[:query_params] = request.query_parameters
    $captured[:body_params] = begin
      request.request_parameters
    rescue EOFError
      nil
    end
    self.response_body = ""
  end
end

class HomeController < CaptureController; actions :index; end
class SessionsController < CaptureController; actions :create, :new, :destroy; end
class Oauth2Controller < CaptureController; actions :token; end
class MailboxesController < CaptureController; actions :inbox, :sent, :archive; end
class PackagesController < CaptureController; actions :received, :sent; end
class UsersController < CaptureController; actions :me; end
class DropboxesController < CaptureController; actions :index; end
class AddressBookController < CaptureController; actions :index; end
class TransfersController < CaptureController; actions :issue_token; end
class DeliveriesController < CaptureController; actions :new, :create; end
class ExternalDeliveriesController < CaptureController; actions :show; end
class SubmissionsController < CaptureController; actions :new, :create; end
class DropboxSubmissionsController < CaptureController; actions :new, :create; end
class AccountsController < CaptureController; actions :show; end
class PasswordsController < CaptureController; actions :edit, :update; end
class PackageRelayController < CaptureController; actions :relay_package; end
class ApiController < CaptureController; actions :handle; end
class ErrorsController < CaptureController; actions :not_found; end
module Admin
  class UsersController < CaptureController; actions :index, :create; end
end

# ------------------------------------------------------------------------------------------------
# Faspex 4's routes, as a Rails 3 application declares them. A Rails 3 `match` without `via:`
# accepts every method, hence `via: :all`; resource-style routes keep their methods.

ROUTES = ActionDispatch::Routing::RouteSet.new
ROUTES.draw do
  scope "/aspera/faspex" do
    match "/", to: "home#index", via: :all
    # The login action runs for every method: GET with user[name]/user[password] logs in.
    match "login(.:format)", to: "sessions#create", via: :all
    match "login/new(.:format)", to: "sessions#new", via: :all
    match "logout(.:format)", to: "sessions#destroy", via: :all
    match "auth/oauth2/token(.:format)", to: "oauth2#token", via: :all
    match "inbox(.:format)", to: "mailboxes#inbox", via: :all
    match "sent(.:format)", to: "mailboxes#sent", via: :all
    match "archive(.:format)", to: "mailboxes#archive", via: :all
    match "received/:id(.:format)", to: "packages#received", via: :all
    match "sent/:id(.:format)", to: "packages#sent", via: :all
    match "me(.:format)", to: "users#me", via: :all
    match "dropboxes(.:format)", to: "dropboxes#index", via: :all
    match "address-book(.:format)", to: "address_book#index", via: :all
    match "issue-token(.:format)", to: "transfers#issue_token", via: :all
    match "send(.:format)", to: "deliveries#new", via: :get
    match "send(.:format)", to: "deliveries#create", via: :post
    match "external_deliveries/:id(.:format)", to: "external_deliveries#show", via: :all
    match "external/submissions/new(.:format)", to: "submissions#new", via: :all
    match "external/submissions(.:format)", to: "submissions#create", via: :post
    match "external/dropbox_submissions/new(.:format)", to: "dropbox_submissions#new", via: :all
    match "external/dropbox_submissions(.:format)", to: "dropbox_submissions#create", via: :post
    namespace :admin do
      match "users(.:format)", to: "users#index", via: :get
      match "users(.:format)", to: "users#create", via: :post
    end
    match "account(.:format)", to: "accounts#show", via: :all
    match "account/password(.:format)", to: "passwords#edit", via: :get
    match "account/password(.:format)", to: "passwords#update", via: [:put, :patch]
    match "package_relay/relay_package(.:format)", to: "package_relay#relay_package", via: :all
    match "api/*path", to: "api#handle", via: :all
  end
  # Rails' routing error, as a route so that it is reported like any other action.
  match "*path", to: "errors#not_found", via: :all
end

# What Rails 6.1's default middleware stack runs before the router that matters for routing and
# parameters: Rack::MethodOverride (`_method` in a form body, or X-HTTP-Method-Override).
APP = Rack::MethodOverride.new(ROUTES)

# ------------------------------------------------------------------------------------------------
# One request.

def plain(value)
  case value
  when Hash
    value.to_h.each_with_object({}) { |(k, v), out| out[k.to_s] = plain(v) }
  when Array
    value.map { |v| plain(v) }
  when String
    value.dup.force_encoding(Encoding::UTF_8).scrub
  when Integer, TrueClass, FalseClass, NilClass
    value
  when Float
    value.finite? ? value : value.to_s
  when Symbol
    value.to_s
  when ActionDispatch::Http::UploadedFile
    value.rewind
    content = value.read
    value.rewind
    {
      "__file__" => true,
      "filename" => plain(value.original_filename),
      "content_type" => plain(value.content_type),
      "content" => plain(content),
    }
  when StringIO
    { "__file__" => true, "content" => plain(value.string) }
  else
    value.to_s
  end
end

# What a front end such as Apache does to a path before Rails sees it: percent escapes decoded,
# then `.` and `..` segments resolved.
def front_end_path(path)
  out = []
  URI::DEFAULT_PARSER.unescape(path).b.split("/", -1).each do |segment|
    case segment
    when "." then next
    when ".." then out.pop if out.size > 1
    else out << segment
    end
  end
  out.join("/")
end

def env_for(request, body)
  target = request.fetch("target")
  path, query = target.split("?", 2)
  path = front_end_path(path) if request["decode_path"]
  env = {
    "REQUEST_METHOD" => request.fetch("method"),
    "SCRIPT_NAME" => "",
    "PATH_INFO" => path,
    "QUERY_STRING" => query || "",
    "REQUEST_URI" => target,
    "SERVER_NAME" => "faspex.example.org",
    "SERVER_PORT" => "443",
    "SERVER_PROTOCOL" => "HTTP/1.1",
    "HTTP_HOST" => "faspex.example.org",
    "HTTPS" => "on",
    "rack.url_scheme" => "https",
    "rack.version" => Rack::VERSION,
    "rack.input" => StringIO.new(body),
    "rack.errors" => StringIO.new,
    "rack.multithread" => false,
    "rack.multiprocess" => false,
    "rack.run_once" => false,
  }
  env["CONTENT_LENGTH"] = body.bytesize.to_s unless body.empty?
  (request["headers"] || {}).each do |name, value|
    key = name.upcase.tr("-", "_")
    if %w[CONTENT_TYPE CONTENT_LENGTH].include?(key)
      env[key] = value
    else
      env["HTTP_#{key}"] = value
    end
  end
  env
end

def read_once(request, body, legacy)
  $legacy = legacy
  ActionDispatch::Request.parameter_parsers = legacy ? LEGACY_PARSERS : MODERN_PARSERS
  use_content_disposition(legacy ? RACK1_CONTENT_DISPOSITION : RACK2_CONTENT_DISPOSITION)
  $captured = nil
  error = nil
  begin
    APP.call(env_for(request, body.dup))
  rescue Exception => e # rubocop:disable Lint/RescueException -- report everything Rails raised
    cause = e.cause ? " (#{e.cause.class}: #{e.cause.message})" : ""
    error = "#{e.class}: #{e.message}#{cause}".scrub
  end
  captured = $captured || {}
  {
    "action" => captured[:action],
    "method" => captured[:method],
    "params" => captured.key?(:params) ? plain(captured[:params]) : nil,
    "path_params" => captured.key?(:path_params) ? plain(captured[:path_params]) : nil,
    "query_params" => captured.key?(:query_params) ? plain(captured[:query_params]) : nil,
    "body_params" => captured.key?(:body_params) ? plain(captured[:body_params]) : nil,
    "error" => error,
  }
ensure
  $legacy = false
  ActionDispatch::Request.parameter_parsers = MODERN_PARSERS
  use_content_disposition(RACK2_CONTENT_DISPOSITION)
end

def xml_body?(request)
  type = (request["headers"] || {}).find { |k, _| k.casecmp?("content-type") }&.last
  return false unless type

  Mime::Type.lookup(type.split(/[;,]/, 2).first.to_s.strip.downcase).symbol == :xml
rescue Mime::Type::InvalidMimeType
  false
end

def answer(request)
  if request["version"]
    return { "ruby" => RUBY_VERSION, "rails" => ActionPack.version.to_s, "rack" => Rack.release }
  end

  body = Base64.strict_decode64(request["body_b64"] || "").b
  modern = read_once(request, body, false)
  legacy = read_once(request, body, true)
  xml = xml_body?(request)
  modern.merge(
    "legacy" => legacy,
    "xml_params" => xml ? legacy["params"] : nil,
    "xml_error" => xml ? legacy["error"] : nil,
  )
end

STDIN.each_line do |line|
  next if line.strip.empty?

  reply = begin
    answer(JSON.parse(line))
  rescue StandardError => e
    { "fatal" => "#{e.class}: #{e.message}".scrub }
  end
  ANSWERS.puts(JSON.generate(reply))
end
