#!/usr/bin/env ruby
# frozen_string_literal: true

# Ruby net/http client of the client matrix (Debian's ruby, OpenSSL from libssl.so.3).
#
# usage: ruby ruby.rb --allowed BASE --other BASE
#
# Sends one POST to BASE/ruby-net-http on the allowed and on the other base URL (two hosts, so two
# connections), with the placeholder from $API_KEY in the Authorization header and in the body. The CA
# comes from SSL_CERT_FILE, as applications get it.
#
# S5: keeps the String it handed to net/http and exits 1 printing "S5 VIOLATION" when it no longer holds
# the placeholder after the request (kloak writes the placeholder back once OpenSSL is done with it).
# Prints "client ruby-net-http pid <pid>" first, so the test can pick this process's events.
require 'net/http'
require 'optparse'
require 'uri'

NAME = 'ruby-net-http'

def send_request(url, key, body)
  uri = URI(url)
  Net::HTTP.start(uri.host, uri.port, use_ssl: true, open_timeout: 20, read_timeout: 20) do |http|
    request = Net::HTTP::Post.new(uri)
    request['Authorization'] = "Bearer #{key}"
    request.body = body
    http.request(request).code
  end
end

options = {}
OptionParser.new do |parser|
  parser.banner = 'usage: ruby.rb --allowed BASE --other BASE'
  parser.on('--allowed BASE', 'base URL of the allowed host') { |v| options[:allowed] = v }
  parser.on('--other BASE', 'base URL of a host the secret may not go to') { |v| options[:other] = v }
end.parse!
abort('usage: ruby.rb --allowed BASE --other BASE') unless options[:allowed] && options[:other]
key = ENV.fetch('API_KEY')

$stdout.sync = true
puts "client #{NAME} pid #{Process.pid}"
failed = false
[options[:allowed], options[:other]].each do |base|
  url = "#{base}/#{NAME}"
  # A fresh mutable String per request: the very memory handed to the library.
  body = +"token=#{key}"
  begin
    puts "#{NAME} #{url} #{send_request(url, key, body)}"
  rescue StandardError => e
    puts "#{NAME} #{url} error: #{e.class}: #{e.message}"
    failed = true
  end
  unless body.include?(key)
    puts "S5 VIOLATION #{NAME}: the body String no longer holds the placeholder"
    failed = true
  end
end
exit(failed ? 1 : 0)
