'use strict';

const { URL } = require('url');

/**
 * A tiny path router: routes are registered with a method and a pattern such as
 * `/users/:id`, and `handle` dispatches a request to the first matching route.
 */
class Router {
  constructor() {
    this.routes = [];
  }

  add(method, pattern, handler) {
    const keys = [];
    const source = pattern.replace(/:(\w+)/g, (_, key) => {
      keys.push(key);
      return '([^/]+)';
    });
    this.routes.push({ method, regex: new RegExp(`^${source}$`), keys, handler });
    return this;
  }

  get(pattern, handler) {
    return this.add('GET', pattern, handler);
  }

  post(pattern, handler) {
    return this.add('POST', pattern, handler);
  }

  match(method, pathname) {
    for (const route of this.routes) {
      if (route.method !== method) continue;
      const found = route.regex.exec(pathname);
      if (!found) continue;
      const params = {};
      route.keys.forEach((key, i) => {
        params[key] = found[i + 1];
      });
      return { route, params };
    }
    return null;
  }

  handle(req, res) {
    const { pathname } = new URL(req.url, 'http://localhost');
    const matched = this.match(req.method, pathname);
    if (!matched) {
      res.statusCode = 404;
      res.end('Not Found');
      return;
    }
    req.params = matched.params;
    matched.route.handler(req, res);
  }
}

module.exports = { Router };
