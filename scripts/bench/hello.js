// hello.js: Node's side of the start-up benchmark (8).
console.log('hello, world');
