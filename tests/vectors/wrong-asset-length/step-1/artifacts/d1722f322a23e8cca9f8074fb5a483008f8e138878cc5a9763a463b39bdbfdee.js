export default 'checkout@1.0.0';
alert(1);
